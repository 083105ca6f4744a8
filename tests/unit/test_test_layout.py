"""Shared test helpers live in tests/helpers/: no test imports another test package's modules.

A module under tests/ may import from ``tests.helpers`` and from non-test modules of its own
package (tests/deploy/chart.py for tests/deploy/test_*.py); never from another package's
modules, a conftest (fixtures come from pytest, not imports) or a ``test_*`` module. bench/ and
scripts/ may import only ``tests.helpers``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMPORTERS = ("tests", "bench", "scripts")


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _targets(root: Path, path: Path) -> list[tuple[int, str]]:
    """The ``tests.*`` modules a file imports (relative imports resolved), with line numbers."""
    package = _module_name(root, path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package[: len(package) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                is_module = (root / Path(*sub.split("."))).with_suffix(".py").is_file()
                found.append((node.lineno, sub if is_module else base))
    return [(line, name) for line, name in found if name == "tests" or name.startswith("tests.")]


def _allowed(importer: str, target: str) -> bool:
    if target == "tests.helpers" or target.startswith("tests.helpers."):
        return True
    leaf = target.rsplit(".", 1)[-1]
    if leaf == "conftest" or leaf.startswith("test_"):
        return False
    if not importer.startswith("tests."):
        return False
    return importer.rsplit(".", 1)[0] == target.rsplit(".", 1)[0]


def violations(root: Path) -> list[str]:
    """Every import that breaks the layout rule, as ``path:line: target``."""
    bad: list[str] = []
    for top in IMPORTERS:
        for path in sorted((root / top).rglob("*.py")):
            importer = _module_name(root, path)
            for line, target in _targets(root, path):
                if not _allowed(importer, target):
                    bad.append(f"{path.relative_to(root)}:{line}: {target}")
    return bad


def test_tests_import_shared_helpers_only_from_tests_helpers() -> None:
    bad = violations(ROOT)
    assert not bad, "move shared helpers into tests/helpers/ and import them from there:\n" + "\n".join(bad)


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_rule_catches_cross_package_conftest_and_test_module_imports(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "tests/__init__.py": "",
            "tests/helpers/__init__.py": "",
            "tests/helpers/auth.py": "",
            "tests/a/__init__.py": "",
            "tests/a/fixtures.py": "",
            "tests/a/conftest.py": "",
            "tests/a/test_one.py": "X = 1\n",
            "tests/a/test_ok.py": "from tests.helpers.auth import x\nfrom tests.a.fixtures import y\n",
            "tests/a/test_conftest.py": "from .conftest import z\n",
            "tests/a/test_two.py": "from tests.a.test_one import X\n",
            "tests/b/__init__.py": "",
            "tests/b/test_cross.py": "def f():\n    from tests.a.fixtures import y\n",
            "bench/run.py": "from tests.helpers import auth\nfrom tests.a.fixtures import y\n",
        },
    )
    assert sorted(violations(root)) == [
        "bench/run.py:2: tests.a.fixtures",
        "tests/a/test_conftest.py:1: tests.a.conftest",
        "tests/a/test_two.py:1: tests.a.test_one",
        "tests/b/test_cross.py:2: tests.a.fixtures",
    ]
