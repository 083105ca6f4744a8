"""Each service's doc has a ``## Code map`` that names every module of the service, and only those.

The map is the newcomer's table of contents (format in CONTRIBUTING.md): one bullet per module,
``- `hubsync/<service>/<module>.py`: one line.``, for every ``.py`` file under
``services/<service>/hubsync/<service>/`` (``__main__.py`` and subpackages' modules included).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("auth", "ingress", "mapper", "writer")
HEADING = "## Code map"
BULLET = re.compile(r"^- `(hubsync/[^`]+\.py)`: \S")


def code_map(service: str) -> list[str] | None:
    """The modules the doc's code map names, in order; None when the doc has no code map yet."""
    lines = (ROOT / "docs" / f"{service}.md").read_text(encoding="utf-8").splitlines()
    if HEADING not in lines:
        return None
    section: list[str] = []
    for line in lines[lines.index(HEADING) + 1 :]:
        if line.startswith("## "):
            break
        section.append(line)
    return [m.group(1) for line in section if (m := BULLET.match(line))]


def modules(service: str) -> set[str]:
    """Every module of the service, as ``hubsync/<service>/...py``."""
    root = ROOT / "services" / service
    return {
        path.relative_to(root).as_posix()
        for path in (root / "hubsync" / service).rglob("*.py")
        if "__pycache__" not in path.parts
    }


@pytest.mark.parametrize("service", SERVICES)
def test_code_map_matches_modules(service: str) -> None:
    named = code_map(service)
    assert named is not None, f"docs/{service}.md has no '{HEADING}' section"
    assert named, f"docs/{service}.md: '{HEADING}' has no bullet in the form - `hubsync/{service}/x.py`: ..."
    duplicates = sorted({m for m in named if named.count(m) > 1})
    assert not duplicates, f"docs/{service}.md code map names these twice: {duplicates}"
    existing = modules(service)
    missing = sorted(existing - set(named))
    stale = sorted(set(named) - existing)
    assert not missing, f"docs/{service}.md code map lacks these modules: {missing}"
    assert not stale, f"docs/{service}.md code map names modules that do not exist: {stale}"


def test_code_map_parser_reads_the_format() -> None:
    """The bullet pattern accepts the documented format and nothing looser."""
    assert BULLET.match("- `hubsync/mapper/feed.py`: the change feed.")
    assert BULLET.match("- `hubsync/writer/stages/submit.py`: a subpackage's module.")
    assert not BULLET.match("- hubsync/mapper/feed.py: no backticks")
    assert not BULLET.match("- `hubsync/mapper/feed.py` no colon")
