"""Every Lua script hubsync runs names each key it touches in ``KEYS``, so Redis Cluster can route
it and refuse it (CROSSSLOT) if its keys span slots.

The cluster client checks the declared keys of a script (and of a MULTI) before sending it, and
Redis 6.2 refuses a script touching a key of another node; neither notices a key the script builds
itself that happens to live on the same node, and Redis 7 refuses that at run time. This check
reads every script constant of ``hubsync`` and fails on a key argument that does not come from
``KEYS``.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterator

import hubsync

# Commands whose first argument is not a key (or that take none).
_KEYLESS = {"TIME", "PUBLISH", "ECHO", "PING"}
# Commands with more than one key argument: all of them must come from KEYS.
_MULTI_KEY = {
    "RPOPLPUSH", "LMOVE", "SMOVE", "RENAME", "RENAMENX", "SUNIONSTORE", "SINTERSTORE", "SDIFFSTORE",
    "ZUNIONSTORE", "ZINTERSTORE", "COPY", "MGET", "DEL", "UNLINK", "EXISTS",
}  # fmt: skip
# Commands whose key follows a subcommand (``MEMORY USAGE key``, ``OBJECT ENCODING key``).
_SUBCOMMAND = {"MEMORY", "OBJECT"}
_CALL = re.compile(r"redis\.p?call\(\s*'(?P<cmd>[A-Za-z]+)'\s*(?P<args>[^)]*)\)")
_FROM_KEYS = re.compile(r"^KEYS\[.+\]$")


def scripts() -> Iterator[tuple[str, str]]:
    """(module.NAME, text) of every module-level string of hubsync that holds Lua calls."""
    for info in pkgutil.walk_packages(hubsync.__path__, "hubsync."):
        if info.name.startswith("hubsync.api") or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                isinstance(value, str)
                and "redis.call(" in value
                and getattr(module, "__name__", "") == info.name
            ):
                yield f"{info.name}.{name}", value


def key_variables(script: str) -> set[str]:
    """Lua names bound to an element of KEYS (``local k = KEYS[1]``, ``for i, k in ipairs(KEYS)``)."""
    names = set(re.findall(r"local\s+(\w+)\s*=\s*KEYS\[[^\]]+\]", script))
    names |= set(re.findall(r"for\s+\w+\s*,\s*(\w+)\s+in\s+ipairs\(KEYS\)", script))
    return names


def bad_key_arguments(script: str) -> list[str]:
    bound = key_variables(script)
    problems = []
    for call in _CALL.finditer(script):
        command = call["cmd"].upper()
        args = [a.strip() for a in call["args"].lstrip(",").split(",") if a.strip()]
        if command in _KEYLESS or not args:
            continue
        if command in _SUBCOMMAND:
            args = args[1:]
        candidates = args if command in _MULTI_KEY else args[:1]
        for arg in candidates:
            if not (_FROM_KEYS.match(arg) or arg in bound):
                problems.append(f"{call.group(0)!r}: key {arg!r} is not from KEYS")
    return problems


def test_every_script_takes_its_keys_from_keys() -> None:
    found = dict(scripts())
    assert len(found) >= 8, sorted(found)  # the check reads the scripts it means to
    problems = {name: bad for name, text in found.items() if (bad := bad_key_arguments(text))}
    assert not problems, problems


def test_the_check_catches_a_key_built_inside_a_script() -> None:
    built = "local k = 'hubsync:' .. ARGV[1]\nredis.call('SET', k, 1)\nredis.call('DEL', KEYS[1], 'x')"
    assert len(bad_key_arguments(built)) == 2
    fine = (
        "local s = KEYS[2]\nfor i, key in ipairs(KEYS) do redis.call('HSET', key, 'a', 1) end\n"
        "redis.call('SADD', s, 1)"
    )
    assert bad_key_arguments(fine) == []
