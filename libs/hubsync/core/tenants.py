"""Tenant lifecycle over Redis: list the portals hubsync knows, show one, delete one.

The operator's tool behind ``hubsync tenant list|show|delete``; it reads and deletes through the
key registry (:mod:`hubsync.core.keys`) only, so a key added there is found here without a change:

- A portal's keys all carry its ``{<portal>}`` hash tag, so they share one slot: they are found
  with ``SCAN MATCH hubsync:{<portal>}:*`` on a single Redis, and on Redis Cluster on the one node
  that owns the slot (:func:`portal_key_batches` is the seam the cluster client plugs into).
- Keys of no portal that hold portal ids (the registries of known portals) are named by
  :func:`hubsync.core.keys.portal_indexes`; deleting a portal removes it from each. Among them
  the change feed's ready and pending sets of every subscriber group, for the object types of
  the portal's feed streams (found among its keys).
- Each key found is told apart by the registry function that builds it (its *pattern*, e.g.
  ``hubsync:{42}:seen:<hour>:<bucket>``), so ``show`` and ``delete`` report counts by pattern.

Nothing here reads a secret: a connection is shown by its descriptive fields, and whether it holds
sealed credentials, never by them.
"""

from __future__ import annotations

import inspect
import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from hubsync.core import keys

__all__ = [
    "DeleteReport",
    "PortalState",
    "PortalSummary",
    "StreamState",
    "TenantStore",
    "key_pattern",
    "portal_key_batches",
]

# Keys read or deleted per round trip.
_BATCH = 500
_SCAN_COUNT = 1000
# The public fields of auth's connection record (never ``sealed``).
_CONNECTION_FIELDS = (
    "tenant",
    "kind",
    "state",
    "scopes",
    "expires_ms",
    "created_ms",
    "updated_ms",
    "used_ms",
    "hub_domain",
    "key_id",
    "v",
)
_SEALED_FIELD = "sealed"
_NUMERIC_FIELDS = ("expires_ms", "created_ms", "updated_ms", "used_ms", "v")
# Where `list` finds portals, in this order (a portal is listed under the first that holds it).
_SOURCES = (
    ("connections", keys.AUTH_CONNECTIONS_KEY),
    ("events", keys.PORTALS_KEY),
    ("writes", keys.WRITER_PORTALS_KEY),
    ("parked", keys.INBOUND_PARKED_PORTALS_KEY),
)
# Registry helpers that build no key of a portal.
_NOT_PORTAL_KEYS = ("portal_key", "portal_key_pattern", "portal_indexes")


def _text(raw: bytes | str | None) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else (raw or "")


# ---- patterns -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Family:
    pattern: str  # with the portal as ``{p}``, placeholders as ``<name>``
    strict: re.Pattern[str]  # placeholders without a colon
    loose: re.Pattern[str]  # placeholders with anything (values that contain a colon)
    rank: tuple[int, int]


_MARK = "\x00"


@cache
def _families() -> tuple[_Family, ...]:
    """Every per-portal key the registry builds, most specific first."""
    built: list[str] = []
    for name in keys.__all__:
        fn = getattr(keys, name)
        if name in _NOT_PORTAL_KEYS or not inspect.isfunction(fn):
            continue
        params = inspect.signature(fn).parameters
        if next(iter(params), None) != "portal_id":
            continue
        args = [f"{_MARK}{p}{_MARK}" for p, v in params.items() if v.kind is v.POSITIONAL_OR_KEYWORD][1:]
        flags = [p for p, v in params.items() if v.kind is v.KEYWORD_ONLY]
        built.append(fn(_MARK + "p" + _MARK, *args))
        built += [fn(_MARK + "p" + _MARK, *args, **{flag: True}) for flag in flags]
    families = []
    for key in dict.fromkeys(built):
        parts = key.split(_MARK)
        literal = parts[0::2]
        names = parts[1::2]
        display = "".join(
            part if i % 2 == 0 else ("{p}" if part == "p" else f"<{part}>") for i, part in enumerate(parts)
        ).replace("{{p}}", "{p}")

        def regex(any_char: str, literal: list[str] = literal, names: list[str] = names) -> re.Pattern[str]:
            out = re.escape(literal[0])
            for name, lit in zip(names, literal[1:], strict=True):
                out += "[^{}]+" if name == "p" else any_char
                out += re.escape(lit)
            return re.compile(out)

        families.append(_Family(display, regex("[^:]+"), regex(".+"), (len(names), -sum(map(len, literal)))))
    return tuple(sorted(families, key=lambda f: f.rank))


@cache
def _families_by_area() -> dict[str, tuple[_Family, ...]]:
    """The families by the first part after the portal (``written``, ``fp``...), so a key is
    matched against a few patterns, not all (a delete may name millions of keys)."""
    out: dict[str, list[_Family]] = {}
    for family in _families():
        out.setdefault(_area(family.pattern), []).append(family)
    return {area: tuple(found) for area, found in out.items()}


def _area(key: str) -> str:
    return key.split("}:", 1)[-1].split(":", 1)[0]


def key_pattern(key: str) -> str:
    """The registry pattern of a portal's key (``hubsync:{p}:fp:<object_type>:<external_id>``),
    or the key with its portal replaced by ``{p}`` when no registry function builds it."""
    candidates = _families_by_area().get(_area(key), ())
    for attr in ("strict", "loose"):
        for family in candidates:
            if getattr(family, attr).fullmatch(key):
                return family.pattern
    return re.sub(r"\{[^}]*\}", "{p}", key, count=1) + " (not in the registry)"


# ---- finding a portal's keys ------------------------------------------------------------------------


async def portal_key_batches(redis: Redis, portal_id: int) -> AsyncIterator[list[bytes]]:
    """Every key of the portal, in batches: ``SCAN MATCH hubsync:{<portal>}:*`` over the keyspace
    of a single Redis (or Sentinel's master). On Redis Cluster the keys live on the node that owns
    the portal's slot only: there the slot's keys are asked for (``CLUSTER COUNTKEYSINSLOT`` /
    ``GETKEYSINSLOT``) and filtered, a cost of the slot's keys, not of the keyspace."""
    pattern = keys.portal_key_pattern(portal_id)
    if isinstance(redis, RedisCluster):  # create_cluster_client types it as Redis
        async for batch in _cluster_slot_keys(redis, portal_id, pattern):
            yield batch
        return
    cursor: int = 0
    while True:
        cursor, found = await redis.scan(cursor, match=pattern, count=_SCAN_COUNT)
        if found:
            yield [k if isinstance(k, bytes) else k.encode() for k in found]
        if not cursor:
            return


async def _cluster_slot_keys(redis: RedisCluster, portal_id: int, pattern: str) -> AsyncIterator[list[bytes]]:
    anchor = keys.auth_connection_key(portal_id)  # any key of the portal names its slot
    slot = redis.keyslot(anchor)
    node = redis.get_node_from_key(anchor)
    total = int(await redis.execute_command("CLUSTER COUNTKEYSINSLOT", slot, target_nodes=node))
    if not total:
        return
    found = await redis.execute_command("CLUSTER GETKEYSINSLOT", slot, total, target_nodes=node)
    prefix = pattern[:-1].encode()
    mine = [k if isinstance(k, bytes) else k.encode() for k in found]
    mine = [k for k in mine if k.startswith(prefix)]
    for i in range(0, len(mine), _BATCH):
        yield mine[i : i + _BATCH]


# ---- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PortalSummary:
    """One row of ``tenant list``: where hubsync knows the portal from."""

    portal_id: int
    tenant: str
    connection: str  # the connection's state ("active", "needs_reauth", "revoked"), "" if none
    kind: str
    connected: bool
    events: bool
    writes: bool
    parked: bool


@dataclass(frozen=True)
class StreamState:
    """A stream's length and the time of its last entry."""

    length: int
    last_entry_ms: int
    # consumer group -> {"pending": entries delivered, not acked; "lag": not yet read (-1: unknown)}
    groups: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class PortalState:
    """``tenant show``: one portal's state, without any secret."""

    portal_id: int
    connection: dict[str, Any] | None
    streams: dict[str, StreamState]
    dead_letters: dict[str, int]
    config_versions: dict[str, str]
    registries: list[str]
    keys: dict[str, int]
    last_activity_ms: int


@dataclass
class DeleteReport:
    """What ``tenant delete`` removed: key counts by pattern, and the registries it left."""

    portal_id: int
    keys: dict[str, int] = field(default_factory=dict)
    registries: list[str] = field(default_factory=list)
    # Keys of the portal found after the delete (something still writes for it).
    remaining: int = 0

    @property
    def total(self) -> int:
        """How many keys in all."""
        return sum(self.keys.values())


# ---- the store ------------------------------------------------------------------------------------


class TenantStore:
    """Lists, shows and deletes portals' data in Redis (see the module docstring)."""

    def __init__(
        self,
        redis: Redis,
        *,
        key_batches: Callable[..., AsyncIterator[list[bytes]]] | None = None,
        ready_shards: int = 64,
    ):
        self.redis = redis
        self.ready_shards = ready_shards
        self._key_batches = key_batches or portal_key_batches

    # -- list --

    async def list_portals(
        self, page_size: int = 500, page_token: str = ""
    ) -> tuple[list[PortalSummary], str]:
        """One page of known portals (about ``page_size``) and the token of the next ("" at the end).

        Walks the registries in turn with ``ZSCAN``/``SSCAN`` cursors, so memory and each call stay
        bounded whatever the number of portals; a portal in several registries is listed once
        (under the first). A portal added while paging may be missed or, rarely, listed twice."""
        source, cursor = _parse_token(page_token)
        ids: list[int] = []
        while source < len(_SOURCES) and not ids:
            key = _SOURCES[source][1]
            raw: list[Any]
            if source == 0:
                cursor, pairs = await self.redis.zscan(key, cursor, count=page_size)
                raw = [m for m, _ in pairs]
            else:
                cursor, raw = await self.redis.sscan(key, cursor, count=page_size)
            ids = sorted({int(m) for m in raw if _text(m).isdigit()})
            ids = await self._first_seen_here(ids, source)
            if not cursor:
                source, cursor = source + 1, 0
        rows = await self._summaries(ids)
        token = "" if source >= len(_SOURCES) else f"{source}:{cursor}"
        return rows, token

    async def _first_seen_here(self, ids: list[int], source: int) -> list[int]:
        if not ids or source == 0:
            return ids
        earlier = await self._memberships(ids)
        return [p for p in ids if not any(earlier[p][:source])]

    async def _memberships(self, ids: list[int]) -> dict[int, list[bool]]:
        members = [str(p) for p in ids]
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zmscore(_SOURCES[0][1], members)
            for _, key in _SOURCES[1:]:
                pipe.smismember(key, members)
            replies = await pipe.execute()
        in_zset = [score is not None for score in replies[0]]
        return {p: [in_zset[i], *(bool(r[i]) for r in replies[1:])] for i, p in enumerate(ids)}

    async def _summaries(self, ids: list[int]) -> list[PortalSummary]:
        if not ids:
            return []
        where = await self._memberships(ids)
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in ids:
                pipe.hmget(keys.auth_connection_key(p), ["tenant", "kind", "state"])
            conns = await pipe.execute()
        return [
            PortalSummary(p, _text(c[0]), _text(c[2]), _text(c[1]), *where[p])
            for p, c in zip(ids, conns, strict=True)
        ]

    # -- show --

    async def show(self, portal_id: int) -> PortalState:
        """The portal's state: connection (no secret), streams, dead letters, config, key counts."""
        names = [k async for batch in self._key_batches(self.redis, portal_id) for k in batch]
        census: Counter[str] = Counter(key_pattern(_text(k)) for k in names)
        async with self.redis.pipeline(transaction=False) as pipe:
            for k in names:
                pipe.type(k)
            types = [_text(t) for t in await pipe.execute()]
        streams = {_text(k): k for k, t in zip(names, types, strict=True) if t == "stream"}
        configs = [k for k, t in zip(names, types, strict=True) if t == "hash" and b":config:" in k]
        state = {name: await self._stream(key) for name, key in sorted(streams.items())}
        versions: dict[str, str] = {}
        for k in configs:
            version = await self.redis.hget(k, "version")
            if version is not None:
                versions[_text(k)] = _text(version)
        connection = await self._connection(portal_id)
        dlq = {
            "writer": state.pop(keys.writer_dlq_key(portal_id), StreamState(0, 0)).length,
            "inbound": state.pop(keys.inbound_dlq_key(portal_id), StreamState(0, 0)).length,
        }
        last = max(
            [s.last_entry_ms for s in state.values()] + [int((connection or {}).get("updated_ms") or 0)],
            default=0,
        )
        return PortalState(
            portal_id=portal_id,
            connection=connection,
            streams=state,
            dead_letters=dlq,
            config_versions=versions,
            registries=await self._registries_holding(portal_id, _feed_types(portal_id, names)),
            keys=dict(sorted(census.items())),
            last_activity_ms=last,
        )

    async def _stream(self, key: bytes) -> StreamState:
        info = await self.redis.xinfo_stream(key)
        last_id = _text(info.get("last-generated-id") or b"0-0")
        groups: dict[str, dict[str, int]] = {}
        for g in await self.redis.xinfo_groups(key):
            lag = g.get("lag")
            groups[_text(g["name"])] = {
                "pending": int(g.get("pending") or 0),
                "lag": -1 if lag is None else int(lag),
            }
        return StreamState(int(info.get("length") or 0), int(last_id.split("-")[0]), groups)

    async def _connection(self, portal_id: int) -> dict[str, Any] | None:
        key = keys.auth_connection_key(portal_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(key, list(_CONNECTION_FIELDS))
            pipe.hexists(key, _SEALED_FIELD)
            values, sealed = await pipe.execute()
        if all(v is None for v in values):
            return None
        out: dict[str, Any] = {}
        for name, value in zip(_CONNECTION_FIELDS, values, strict=True):
            if value is not None:
                text = _text(value)
                out[name] = int(text) if name in _NUMERIC_FIELDS and text.isdigit() else text
        if "scopes" in out:
            out["scopes"] = _json_list(out["scopes"])
        out["holds_credentials"] = bool(sealed)
        return out

    async def _indexes(self, portal_id: int, feed_types: set[str]) -> list[tuple[str, str]]:
        """(key, type) of every registry of portals that exists (see ``keys.portal_indexes``).

        ``feed_types``: the object types of the portal's feed streams, whose marks every
        subscriber group (``FEED_GROUPS_KEY``) may hold.
        """
        groups = {_text(g) for g in await self.redis.smembers(keys.FEED_GROUPS_KEY)} if feed_types else set()
        indexes = keys.portal_indexes(portal_id, self.ready_shards, feed_groups=groups, feed_types=feed_types)
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in indexes:
                pipe.type(key)
            types = [_text(t) for t in await pipe.execute()]
        return [(key, kind) for key, kind in zip(indexes, types, strict=True) if kind in _MEMBER_OPS]

    async def _registries_holding(self, portal_id: int, feed_types: set[str]) -> list[str]:
        indexes = await self._indexes(portal_id, feed_types)
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, kind in indexes:
                getattr(pipe, _MEMBER_OPS[kind])(key, str(portal_id))
            found = await pipe.execute()
        return [key for (key, _), hit in zip(indexes, found, strict=True) if hit not in (None, 0, False)]

    # -- delete --

    async def census(self, portal_id: int) -> DeleteReport:
        """What a delete would remove now (nothing is changed)."""
        report = DeleteReport(portal_id)
        feed_types: set[str] = set()
        async for batch in self._key_batches(self.redis, portal_id):
            feed_types |= _feed_types(portal_id, batch)
            for k in batch:
                pattern = key_pattern(_text(k))
                report.keys[pattern] = report.keys.get(pattern, 0) + 1
        report.keys = dict(sorted(report.keys.items()))
        report.registries = await self._registries_holding(portal_id, feed_types)
        return report

    async def delete(self, portal_id: int) -> DeleteReport:
        """Removes every key of the portal and its membership in every registry of portals.

        The portal leaves the registries first (consumers stop finding it), then its keys go
        (``UNLINK``, batches in its one slot), then the registries are cleaned once more and the
        keys counted again: a service still writing for the portal shows as ``remaining``. The
        feed's marks of the portal's streams go in that second cleaning (per subscriber group,
        for the object types of the feed streams just removed; a subscriber that takes such a
        mark meanwhile finds no stream and releases it).
        Idempotent: a second run removes nothing and reports zeros."""
        report = DeleteReport(portal_id)
        report.registries = await self._unregister(portal_id, set())
        counts: Counter[str] = Counter()
        feed_types: set[str] = set()
        async for batch in self._key_batches(self.redis, portal_id):
            counts.update(key_pattern(_text(k)) for k in batch)
            feed_types |= _feed_types(portal_id, batch)
            await self.redis.unlink(*batch)
        report.keys = dict(sorted(counts.items()))
        for key in await self._unregister(portal_id, feed_types):
            if key not in report.registries:
                report.registries.append(key)
        report.remaining = sum([len(b) async for b in self._key_batches(self.redis, portal_id)])
        return report

    async def _unregister(self, portal_id: int, feed_types: set[str]) -> list[str]:
        removed: list[str] = []
        for key, kind in await self._indexes(portal_id, feed_types):
            if await getattr(self.redis, _REMOVE_OPS[kind])(key, str(portal_id)):
                removed.append(key)
        return removed


_MEMBER_OPS = {"set": "sismember", "zset": "zscore", "hash": "hexists"}
_REMOVE_OPS = {"set": "srem", "zset": "zrem", "hash": "hdel"}


def _feed_types(portal_id: int, names: Iterable[bytes]) -> set[str]:
    """The object types of the portal's feed streams among ``names`` (``hubsync:{p}:feed:<type>``)."""
    prefix = keys.feed_key(portal_id, "").encode()
    return {_text(k[len(prefix) :]) for k in names if k.startswith(prefix) and b":" not in k[len(prefix) :]}


def _json_list(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _parse_token(token: str) -> tuple[int, int]:
    if not token:
        return 0, 0
    source, _, cursor = token.partition(":")
    if not (source.isdigit() and cursor.isdigit() and int(source) < len(_SOURCES)):
        raise ValueError(f"page token {token!r} is not one `tenant list` printed")
    return int(source), int(cursor)
