"""The publish script: a batch's writes applied atomically, only if what they were decided on
still holds.

The publisher reads the state its decision depends on (the last published digest of each record,
the fingerprints of the compared ones), decides in Python what to publish, and hands this script
the expected values and the writes. The script compares each expected value with what Redis holds
now and, when all match, runs the writes; else it writes nothing and answers 0, and the publisher
reads and decides again. That is what ``WATCH`` + ``MULTI``/``EXEC`` did, in one round trip
instead of two (``WATCH``, then ``MULTI``/``EXEC``), and it misses no conflict that matters: a
write that leaves the compared values as they were (``WATCH`` failed on it) cannot change the
decision.

Every key is one portal's (hash tag ``{<portal>}``): one cluster slot.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from redis.exceptions import NoScriptError

__all__ = ["PUBLISH_SCRIPT", "PublishScript", "Writes"]

# KEYS: the portal's keys. ARGV[1]: the number of checks; each check: index of its key in KEYS,
# field count n (0: the key is a string, read with GET, one value), the n fields, then the
# expected values ('' none, else '=' .. value). Then the writes, each: its item count n, then
# n items: the command, the index of its key in KEYS, its other arguments. Returns 1 when the
# writes ran, 0 when a value differed (nothing written).
_LUA = """
local i = 2
for _ = 1, tonumber(ARGV[1]) do
  local key = KEYS[tonumber(ARGV[i])]
  local n = tonumber(ARGV[i + 1])
  i = i + 2
  local got
  if n == 0 then
    got = {redis.call('GET', key)}
    n = 1
  else
    got = redis.call('HMGET', key, unpack(ARGV, i, i + n - 1))
    i = i + n
  end
  for k = 1, n do
    local v = got[k]
    if v then v = '=' .. v else v = '' end
    if v ~= ARGV[i + k - 1] then return 0 end
  end
  i = i + n
end
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local args = {ARGV[i + 1], KEYS[tonumber(ARGV[i + 2])]}
  for k = 3, n do args[k] = ARGV[i + k] end
  redis.call(unpack(args))
  i = i + n + 1
end
return 1
"""
_SHA = hashlib.sha1(_LUA.encode()).hexdigest()  # noqa: S324 - Redis names scripts so


class Writes:
    """A batch's expected values and writes, for :class:`PublishScript`.

    The write methods take the arguments of redis-py's pipeline methods of the same name, so
    code that queues writes on a pipeline (``queue_dead_letter``, ``Source.finish``) queues them
    here alike.
    """

    def __init__(self) -> None:
        self.keys: list[str] = []
        self._index: dict[str, int] = {}
        self._checks: list[Any] = []
        self._count = 0
        self._writes: list[Any] = []

    def _key(self, key: str) -> int:
        if key not in self._index:
            self.keys.append(key)
            self._index[key] = len(self.keys)
        return self._index[key]

    def expect(self, key: str, fields: Sequence[str], values: Sequence[bytes | None]) -> None:
        """The writes run only if ``key`` still holds ``values``: its string value (no
        ``fields``), or the values of ``fields`` of its hash (None: no value)."""
        self._count += 1
        self._checks += [self._key(key), len(fields), *fields]
        self._checks += [b"" if v is None else b"=" + v for v in values]

    def _write(self, command: str, key: str, *args: Any) -> None:
        self._writes += [2 + len(args), command, self._key(key), *args]

    def xadd(
        self, name: str, fields: Mapping[Any, Any], *, maxlen: int | None = None, approximate: bool = True
    ) -> None:
        """``XADD name [MAXLEN [~] maxlen] * field value ...``."""
        trim = ["MAXLEN", *(["~"] if approximate else []), maxlen] if maxlen is not None else []
        self._write("XADD", name, *trim, "*", *(x for kv in fields.items() for x in kv))

    def xack(self, name: str, group: str, *ids: bytes | str) -> None:
        """``XACK name group id ...``."""
        self._write("XACK", name, group, *ids)

    def xdel(self, name: str, *ids: bytes | str) -> None:
        """``XDEL name id ...``."""
        self._write("XDEL", name, *ids)

    def set(self, name: str, value: bytes | str, *, ex: int) -> None:
        """``SET name value EX ex``."""
        self._write("SET", name, value, "EX", ex)

    def hset(self, name: str, *, mapping: Mapping[Any, Any]) -> None:
        """``HSET name field value ...``."""
        self._write("HSET", name, *(x for kv in mapping.items() for x in kv))

    def delete(self, name: str) -> None:
        """``DEL name``."""
        self._write("DEL", name)

    def args(self) -> list[Any]:
        """The script's ARGV."""
        return [self._count, *self._checks, *self._writes]


class PublishScript:
    """Runs :class:`Writes` (see the module doc)."""

    @staticmethod
    async def run(redis: Any, writes: Writes) -> bool:
        """Apply ``writes`` if their expected values hold; True when applied."""
        if not writes.keys:
            return True
        command = ["EVALSHA", _SHA, len(writes.keys), *writes.keys, *writes.args()]
        try:
            return bool(await redis.execute_command(*command))
        except NoScriptError:
            await redis.script_load(_LUA)
            return bool(await redis.execute_command(*command))


PUBLISH_SCRIPT = PublishScript()
