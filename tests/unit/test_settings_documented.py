"""Every environment variable a service reads is named in the README's settings table or in the
service doc the README points to: the variables are taken from the settings classes themselves
(pydantic-settings: ``env_prefix`` + field name) and from the few direct environment reads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from hubsync.auth.settings import AuthSettings
from hubsync.core.settings import CoreSettings
from hubsync.ingress.settings import IngressSettings
from hubsync.mapper.settings import MapperSettings
from hubsync.writer.settings import WriterSettings

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("AUTH", "INGRESS", "MAPPER", "WRITER")
# Where each class's variables may be documented: the README's shared table, or the service's doc.
DOCS: dict[type[BaseSettings], list[str]] = {
    CoreSettings: ["README.md"],
    AuthSettings: ["README.md", "docs/auth.md"],
    IngressSettings: ["README.md", "docs/ingress.md"],
    MapperSettings: ["README.md", "docs/mapper.md"],
    WriterSettings: ["README.md", "docs/writer.md"],
}
# The README documents the four service addresses as one pattern.
PATTERNS = {f"HUBSYNC_{s}_ADDRESS": "HUBSYNC_<SERVICE>_ADDRESS" for s in SERVICES}
_DIRECT_READ = re.compile(r"os\.environ(?:\.get)?[\(\[]\"(HUBSYNC_[A-Z0-9_]+)\"")


def variables(cls: type[BaseSettings]) -> set[str]:
    prefix = str(cls.model_config.get("env_prefix", ""))
    return {f"{prefix}{name}".upper() for name in cls.model_fields}


def direct_reads() -> set[str]:
    """``HUBSYNC_*`` variables read with ``os.environ`` outside the settings classes."""
    found: set[str] = set()
    for path in [*(ROOT / "libs").rglob("*.py"), *(ROOT / "services").rglob("*.py")]:
        found |= set(_DIRECT_READ.findall(path.read_text()))
    return found


def first_cells(doc: str) -> str:
    """The first cell of every table row of a doc: a service doc's settings table names its
    variables there without their prefix (``| `ADMIN_CALLERS` | ...``)."""
    return "\n".join(line.split("|")[1] for line in doc.splitlines() if line.startswith("|"))


def documented(variable: str, doc_names: list[str], prefix: str = "") -> bool:
    docs = [(ROOT / name).read_text() for name in doc_names]
    text = "\n".join(docs)
    if f"`{variable}`" in text or (variable in PATTERNS and f"`{PATTERNS[variable]}`" in text):
        return True
    # a service doc's own table, under its prefix (README.md's shared table has none)
    short = variable.removeprefix(prefix)
    service_docs = [doc for name, doc in zip(doc_names, docs, strict=True) if name != "README.md"]
    return bool(prefix) and short != variable and any(f"`{short}`" in first_cells(d) for d in service_docs)


@pytest.mark.parametrize("cls", list(DOCS), ids=lambda c: c.__name__)
def test_every_setting_is_documented(cls: type[BaseSettings]) -> None:
    names = variables(cls)
    assert len(names) >= 3, names  # the scan finds the fields at all
    prefix = str(cls.model_config.get("env_prefix", "")) if cls is not CoreSettings else ""
    missing = sorted(v for v in names if not documented(v, DOCS[cls], prefix))
    assert not missing, f"{cls.__name__}: not in {' or '.join(DOCS[cls])}: {missing}"


def test_variables_read_directly_are_documented() -> None:
    found = direct_reads()
    assert "HUBSYNC_CLI_TOKEN" in found  # the scan sees the CLI's own read
    missing = sorted(
        v
        for v in found
        if not any(documented(v, ["README.md", f"docs/{s.lower()}.md"], f"HUBSYNC_{s}_") for s in SERVICES)
    )
    assert not missing, f"read with os.environ but documented nowhere: {missing}"
