"""``./dev check`` refuses a wire-incompatible change to protos/ unless the package version moves.

The check is ``buf breaking protos --against '.git#tag=<release>,subdir=protos'`` (see ``dev``):
buf reads the release's protos from the local git repository, so it needs no network. Each test
builds a throwaway repository from the current protos/, tags it as the release, changes it and
runs the same command there.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUF = Path(sys.executable).parent / "buf"
WRITER_PROTO = Path("protos/hubsync/api/writer/v1/writer.proto")


def release_tag() -> str:
    """The tag ``dev`` checks against (``RELEASE_TAG=...``)."""
    match = re.search(r"^RELEASE_TAG=(\S+)$", (ROOT / "dev").read_text(encoding="utf-8"), re.MULTILINE)
    assert match, "dev names no RELEASE_TAG"
    return match.group(1)


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "-c", "commit.gpgsign=false", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def breaking(repo: Path) -> subprocess.CompletedProcess[str]:
    against = f".git#tag={release_tag()},subdir=protos"
    return subprocess.run(
        [str(BUF), "breaking", "protos", "--against", against],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def released(tmp_path: Path) -> Path:
    """A git repository holding today's protos/, tagged as the release (annotated, as ours is)."""
    if not BUF.exists() or shutil.which("git") is None:
        pytest.skip("needs git and buf (buf-bin, installed by ./dev setup)")
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "protos", repo / "protos")
    git(repo, "init", "-q")
    git(repo, "add", "protos")
    git(repo, "commit", "-q", "-m", "release")
    git(repo, "tag", "-a", release_tag(), "-m", "release")
    return repo


def test_unchanged_protos_pass(released: Path) -> None:
    result = breaking(released)
    assert result.returncode == 0, result.stdout + result.stderr


def test_wire_incompatible_change_fails(released: Path) -> None:
    """A field's number changes in place: old and new peers would misread each other."""
    proto = released / WRITER_PROTO
    text = proto.read_text(encoding="utf-8")
    changed, count = re.subn(r"(\n  \w[\w.]* \w+ = )1;", r"\g<1>99;", text, count=1)
    assert count == 1, "no field numbered 1 in writer.proto to renumber"
    proto.write_text(changed, encoding="utf-8")
    result = breaking(released)
    assert result.returncode != 0, "buf breaking accepted a renumbered field"
    assert "writer.proto" in result.stdout + result.stderr


def test_breaking_change_in_a_new_package_version_passes(released: Path) -> None:
    """The way to make an incompatible change: a new package version next to the released one."""
    v1 = released / WRITER_PROTO
    v2 = v1.parent.parent / "v2" / v1.name
    v2.parent.mkdir()
    text = v1.read_text(encoding="utf-8").replace("hubsync.api.writer.v1", "hubsync.api.writer.v2")
    text = text.replace("hubsync/api/writer/v1;", "hubsync/api/writer/v2;")
    changed, count = re.subn(r"(\n  \w[\w.]* \w+ = )1;", r"\g<1>99;", text, count=1)
    assert count == 1
    v2.write_text(changed, encoding="utf-8")
    result = breaking(released)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_committed_release_image_matches_the_tag(tmp_path: Path) -> None:
    """A clone without the tag compares against protos/releases/<tag>.binpb: it must be the
    tag's protos, and today's protos must be compatible with it."""
    if not BUF.exists():
        pytest.skip("needs buf (buf-bin, installed by ./dev setup)")
    tag = release_tag()
    image = ROOT / "protos" / "releases" / f"{tag}.binpb"
    assert image.is_file(), f"missing {image}: buf build '.git#tag={tag},subdir=protos' -o {image}"
    has_tag = subprocess.run(
        ["git", "rev-parse", "-q", "--verify", f"refs/tags/{tag}"], cwd=ROOT, capture_output=True
    )
    if has_tag.returncode == 0:
        built = tmp_path / "from-tag.binpb"
        subprocess.run(
            [str(BUF), "build", f".git#tag={tag},subdir=protos", "-o", str(built)],
            cwd=ROOT,
            check=True,
            capture_output=True,
            timeout=300,
        )
        assert built.read_bytes() == image.read_bytes(), f"{image} is not the build of tag {tag}"
    against = subprocess.run(
        [str(BUF), "breaking", "protos", "--against", str(image)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert against.returncode == 0, against.stdout + against.stderr
