"""The ``e2e`` and ``slow`` markers, applied at collection so no test body changes.

- ``e2e``: every test under ``tests/e2e/`` (the whole suite as separate processes).
- ``slow``: the tests listed in :data:`SLOW`, measured as the slowest of the rest
  (``nice -n 19 .venv/bin/python -m pytest tests --ignore=tests/e2e --durations=60``).

The fast loop is ``./dev test -m "not e2e and not slow"``; the full suite still runs everything.
When a test becomes one of the slowest, add its node id (or its file, for a whole module) here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
E2E = TESTS / "e2e"

# Node ids relative to the repository root: a file marks every test in it, a ``file::name``
# marks that test (every parametrization of it).
SLOW: tuple[str, ...] = ()


def _is_slow(nodeid: str) -> bool:
    path, _, rest = nodeid.partition("::")
    name = rest.split("[", 1)[0]
    return any(entry in (path, f"{path}::{name}") for entry in SLOW)


def mark_item(item: pytest.Item) -> None:
    """Add ``e2e`` to tests under tests/e2e and ``slow`` to those in :data:`SLOW`."""
    if item.path.is_relative_to(E2E):
        item.add_marker(pytest.mark.e2e)
    if _is_slow(item.nodeid):
        item.add_marker(pytest.mark.slow)
