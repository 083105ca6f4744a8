"""Writes the caller-policy table of docs/security.md from the services' own policies.

Usage: python scripts/policy_table.py [--check]

Each service's ``caller_policy(settings)`` is evaluated twice: with the default settings (who
may call each method out of the box) and with each caller-list setting replaced by its variable's
name (which variable changes that list). --check fails when the committed table differs, so the
document cannot drift from the code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings

from hubsync.auth.service import caller_policy as auth_policy
from hubsync.auth.settings import AuthSettings
from hubsync.ingress.service import caller_policy as ingress_policy
from hubsync.ingress.settings import IngressSettings
from hubsync.mapper.service import caller_policy as mapper_policy
from hubsync.mapper.settings import MapperSettings
from hubsync.writer.service import caller_policy as writer_policy
from hubsync.writer.settings import WriterSettings

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "security.md"
BEGIN = "<!-- policy-table: written by scripts/policy_table.py from the code; do not edit by hand -->"
END = "<!-- /policy-table -->"

PolicyOf = Callable[[Any], Mapping[str, Iterable[str]]]
SERVICES: list[tuple[str, PolicyOf, type[BaseSettings]]] = [
    ("auth", auth_policy, AuthSettings),
    ("ingress", ingress_policy, IngressSettings),
    ("mapper", mapper_policy, MapperSettings),
    ("writer", writer_policy, WriterSettings),
]


def _caller_lists(cls: type[BaseSettings]) -> list[str]:
    """The settings that are lists of caller names."""
    return [name for name in cls.model_fields if name.endswith(("_callers", "_readers"))]


def table() -> str:
    """The markdown table: service, method, default callers, the variables that change them."""
    rows = [
        "| service | method | callers (default) | where the list comes from |",
        "|---|---|---|---|",
    ]
    for service, policy_of, cls in SERVICES:
        prefix = str(cls.model_config.get("env_prefix", ""))
        defaults = policy_of(cls.model_construct())
        variables = {name: f"${prefix}{name.upper()}" for name in _caller_lists(cls)}
        lists: dict[str, Any] = {name: [v] for name, v in variables.items()}
        symbolic = policy_of(cls.model_construct(**lists))
        for method in sorted(defaults, key=lambda m: m.rsplit("/", 1)[1]):
            callers = ", ".join(f"`{c}`" for c in dict.fromkeys(defaults[method])) or "nobody"
            sources = dict.fromkeys(symbolic[method])
            origin = ", ".join(f"`{c[1:]}`" if c.startswith("$") else f"`{c}` (fixed)" for c in sources)
            rows.append(f"| {service} | `{method.rsplit('/', 1)[1]}` | {callers} | {origin or 'nobody'} |")
    return "\n".join(rows)


def render(doc: str) -> str:
    """``doc`` with the table between its markers replaced by the current one."""
    start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    return doc[:start] + "\n" + table() + "\n" + doc[end:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail when docs/security.md is stale")
    args = parser.parse_args()
    current = DOC.read_text()
    wanted = render(current)
    if args.check:
        if wanted != current:
            print(f"{DOC.relative_to(ROOT)}: the policy table differs from the code; run {sys.argv[0]}")
            return 1
        return 0
    DOC.write_text(wanted)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
