"""The Redis contract: keys are spelled only in ``hubsync.core.keys``, and the design doc's key
table lists exactly the patterns the registry builds."""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Iterator
from pathlib import Path

from hubsync.core import keys
from hubsync.ingress import _enqueue_script

ROOT = Path(__file__).resolve().parents[3]
REGISTRY = ROOT / "libs" / "hubsync" / "core" / "keys.py"
KEY_TABLE = ROOT / "docs" / "design" / "tenancy.md"
# A Redis key or channel of hubsync: "hubsync:" followed by a name (not the prose "hubsync: ...").
_KEY_LITERAL = re.compile(r"hubsync:[^\s]")


def _sources() -> Iterator[Path]:
    for top in ("libs", "services"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if path == REGISTRY or path.name.endswith(("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")):
                continue
            yield path


def _literal_keys(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and _KEY_LITERAL.match(node.value):
            yield node.lineno, node.value
        if isinstance(node, ast.Call):
            func = node.func
            name = (
                func.id
                if isinstance(func, ast.Name)
                else func.attr
                if isinstance(func, ast.Attribute)
                else ""
            )
            if name == "portal_key":
                yield node.lineno, "portal_key(...)"


def test_no_key_is_built_outside_the_registry() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {text!r}"
        for path in _sources()
        for line, text in _literal_keys(ast.parse(path.read_text(), str(path)))
    ]
    assert found == [], "build Redis keys with hubsync.core.keys, not literals:\n" + "\n".join(found)


def test_the_check_sees_a_literal_key() -> None:
    tree = ast.parse('A = "hubsync:portals"\nB = f"hubsync:{{{1}}}:events"\nC = portal_key(1, "x")\n')
    assert sorted(line for line, _ in _literal_keys(tree)) == [1, 2, 3]
    assert list(_literal_keys(ast.parse('print("hubsync: invalid configuration")'))) == []


def _documented() -> list[str]:
    text = KEY_TABLE.read_text()
    table = text.split("<!-- key-table:start -->", 1)[1].split("<!-- key-table:end -->", 1)[0]
    return re.findall(r"^\| `([^`]+)` \|", table, flags=re.MULTILINE)


def _pattern(documented: str) -> re.Pattern[str]:
    parts = re.split(r"(<[^>]+>)", documented.replace("{p}", "{7}"))
    return re.compile("".join("[^:]+" if p.startswith("<") else re.escape(p) for p in parts))


# Helpers of the registry that build no key of their own.
_NOT_KEYS = ("portal_key", "portal_key_pattern", "portal_indexes")


def _registry_keys() -> dict[str, str]:
    """Every key the registry can build, by the name that built it (placeholders for arguments)."""
    built: dict[str, str] = {}
    for name in keys.__all__:
        value = getattr(keys, name)
        if isinstance(value, str):
            built[name] = value
        elif inspect.isfunction(value) and name not in _NOT_KEYS:
            params = inspect.signature(value).parameters
            args = [
                "7" if p == "portal_id" else f"x{p}"
                for p, v in params.items()
                if v.kind is v.POSITIONAL_OR_KEYWORD
            ]
            flags = [p for p, v in params.items() if v.kind is v.KEYWORD_ONLY]
            built[name] = value(*args)
            for flag in flags:
                built[f"{name}({flag})"] = value(*args, **{flag: True})
    return built


def test_every_registry_key_is_in_the_key_table_and_back() -> None:
    patterns = {doc: _pattern(doc) for doc in _documented()}
    assert len(patterns) == len(_documented()), "a pattern is listed twice"
    built = _registry_keys()
    undocumented = sorted(n for n, k in built.items() if not any(p.fullmatch(k) for p in patterns.values()))
    assert undocumented == [], f"add these to the key table in {KEY_TABLE.name}"
    unused = sorted(d for d, p in patterns.items() if not any(p.fullmatch(k) for k in built.values()))
    assert unused == [], "the key table lists patterns the registry does not build"


def test_the_committer_script_writes_the_registry_fields() -> None:
    # A Lua script cannot import the registry: this pins its field names to it.
    written = set(re.findall(r"'([a-z_]+)', (?:e\[\d+\]|entry|accepted)", _enqueue_script.ENQUEUE_LUA))
    written |= set(re.findall(r"table.insert\(command, '([a-z_]+)'\)", _enqueue_script.ENQUEUE_LUA))
    assert written == {
        keys.EventEntry.ENTRY,
        keys.EventEntry.EVENT,
        keys.EventEntry.TRACEPARENT,
        keys.EventEntry.TRACESTATE,
        keys.EventEntry.ACCEPTED_MS,
        keys.EventEntry.ORIGIN,
        keys.EchoEntry.RECORD,
    }


def test_every_key_of_a_portal_hashes_to_the_portal_slot() -> None:
    """Redis Cluster: a script or transaction over one portal's keys stays in one slot only if
    every per-portal key function builds a key of the portal's hash slot (its ``{<portal>}`` tag).
    Each function is called with made-up arguments; a new one is checked without listing it."""
    from redis.crc import key_slot

    for portal in (1, 12345, 987_654_321):
        slot = key_slot(keys.events_key(portal).encode())
        checked = 0
        for name in keys.__all__:
            fn = getattr(keys, name)
            if not inspect.isfunction(fn) or "portal_id" not in inspect.signature(fn).parameters:
                continue
            if inspect.signature(fn).return_annotation not in (str, "str"):
                continue  # not one key (e.g. portal_indexes: the global sets naming a portal)
            params = inspect.signature(fn).parameters.values()
            required = [p for p in params if p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD]
            built = fn(portal, *["x:{y}"] * (len(required) - 1))
            assert key_slot(built.encode()) == slot, f"{name}: {built} is not in portal {portal}'s slot"
            checked += 1
        assert checked >= 30
