"""docs/ingress.md's code map names every module of the ingress package, and only those."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_the_code_map_matches_the_package() -> None:
    doc = (ROOT / "docs" / "ingress.md").read_text()
    section = doc.split("\n## Code map\n", 1)[1].split("\n## ", 1)[0]
    mapped = re.findall(r"^- `(hubsync/ingress/[\w/]+\.py)`: \S", section, flags=re.M)
    package = ROOT / "services" / "ingress"
    modules = sorted(str(p.relative_to(package)) for p in (package / "hubsync" / "ingress").rglob("*.py"))
    assert len(mapped) == len(set(mapped)), "a module is listed twice"
    assert sorted(mapped) == modules
