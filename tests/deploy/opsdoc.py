"""docs/operations.md's sections and their anchors, for checks of what links into it."""

from __future__ import annotations

import re

from tests.deploy.chart import ROOT

DOC = ROOT / "docs" / "operations.md"


def sections() -> dict[str, str]:
    """Heading text -> body, for every ## and ### heading."""
    text = DOC.read_text()
    parts = re.split(r"^#{2,3} (.+)$", text, flags=re.MULTILINE)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")


def anchors() -> set[str]:
    return {anchor(heading) for heading in sections()}
