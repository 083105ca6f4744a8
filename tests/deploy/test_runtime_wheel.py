"""The runtime wheel (what the container image installs) holds no development tooling.

The local suite (``hubsync run``: the sandbox, a local Redis and certificates, the demo, the trace
collector) lives only in an editable install with the ``dev`` extra (pyproject.toml). The wheel is
built here offline, as the Dockerfile builds it, then every module in it is imported with the
repository's source roots taken off ``sys.path``: none may need a development module.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEV_MODULES = {"hubsync.core.devredis", "hubsync.core.devcerts", "hubsync.cli.suite", "hubsync.cli.demo"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("hatchling", reason="the dev extra's hatchling builds the wheel offline")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-build-isolation",
            "--no-deps",
            "--no-index",
            "--wheel-dir",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (built,) = out.glob("hubsync-*.whl")
    return built


def source_roots() -> set[str]:
    """The directories an editable install puts on sys.path (pyproject's dev-mode-dirs), and the root."""
    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"][
        "wheel"
    ]
    return {str(ROOT), *(str(ROOT / d) for d in target["dev-mode-dirs"])}


def modules_in(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if n.startswith("hubsync/") and n.endswith(".py")]
    return {n.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for n in names}


def test_wheel_has_no_development_code(wheel: Path) -> None:
    modules = modules_in(wheel)
    assert not {m for m in modules if m == "hubsync.sandbox" or m.startswith("hubsync.sandbox.")}
    assert not modules & DEV_MODULES
    excluded = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"][
        "wheel"
    ]
    for path in excluded["exclude"]:
        module = path.removeprefix("libs/").removesuffix(".py").replace("/", ".")
        assert module not in modules, f"{path} is excluded but in the wheel"
    # What the image runs is there.
    assert {"hubsync.cli.__main__", "hubsync.auth.__main__", "hubsync.writer.__main__"} <= modules


def test_wheel_modules_import_without_development_code(wheel: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp_path / "site")
    # Generated code aside; a service's __main__ runs the service when imported.
    modules = sorted(
        m for m in modules_in(wheel) if not m.startswith("hubsync.api.") and not m.endswith("__main__")
    )
    script = textwrap.dedent(
        f"""
        import importlib, sys
        sources = {sorted(source_roots())!r}
        kept = [p for p in sys.path if p and p.rstrip("/") not in sources]
        sys.path[:] = [{str(tmp_path / "site")!r}, *kept]
        for name in {modules!r}:
            importlib.import_module(name)
        dev = {sorted(DEV_MODULES)!r}
        dev = sorted(m for m in sys.modules if m in dev or m.startswith("hubsync.sandbox"))
        assert not dev, dev
        try:
            importlib.import_module("hubsync.sandbox")
        except ModuleNotFoundError:
            pass
        else:
            raise AssertionError("hubsync.sandbox importable from the runtime wheel")
        from hubsync.cli.__main__ import main
        try:
            main(["run", "--no-demo"])
        except SystemExit as exc:
            assert exc.code == 2, exc.code
        else:
            raise AssertionError("hubsync run did not refuse")
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBSYNC_")}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "needs a development install" in result.stdout
