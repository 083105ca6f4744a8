"""Per-portal and per-tenant configuration in Redis: versioned documents, history, change
announcements, and the short-lived cache each replica reads them through.

Layers, lowest first: the default (mapping files and service settings, not stored here), the
tenant's override (a named group of portals; a portal joins with a ``tenant`` document), the
portal's override. Each (scope, kind) holds its version in force in a hash and every stored
version in a capped history stream, written together by one script (both keys share the scope's
hash tag, so the script stays in one cluster slot).

Propagation: after storing, the writer of a version publishes ``<scope>|<kind>|<version>`` on
:data:`~hubsync.core.keys.CONFIG_CHANGES_CHANNEL`; every replica's :class:`PortalConfigCache`
drops what it holds for that scope, and entries expire after ``ttl_s`` (5 s) anyway, so a missed
message costs at most that long. A replica reads only the configuration of portals it is
working on: an idle portal costs nothing.

Documents never hold a secret: mappings, limits, a pilot flag and reason, a tenant name.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Required, TypedDict, Unpack

from redis.asyncio import Redis

from hubsync.api.common.v1 import config_pb2
from hubsync.core.keys import (
    CONFIG_CHANGES_CHANNEL,
    ConfigEntry,
    config_history_key,
    config_key,
    tenant_config_history_key,
    tenant_config_key,
)
from hubsync.core.redis import as_str, follow_channel

__all__ = [
    "HISTORY_MAX",
    "KIND_NAMES",
    "EffectiveConfig",
    "PortalConfigCache",
    "Scope",
    "StoreOptions",
    "StoredVersion",
    "VersionConflict",
    "announce",
    "check_tenant_name",
    "load_version",
    "store_version",
    "version_history",
]

log = logging.getLogger(__name__)

#: Stored versions kept per scope and kind (older ones cannot be rolled back to).
HISTORY_MAX = 50
#: How long a replica trusts what it read without a change announcement.
CACHE_TTL_S = 5.0

KIND_NAMES: dict[config_pb2.ConfigKind.ValueType, str] = {
    config_pb2.CONFIG_KIND_MAPPINGS: "mappings",
    config_pb2.CONFIG_KIND_LIMITS: "limits",
    config_pb2.CONFIG_KIND_PILOT: "pilot",
    config_pb2.CONFIG_KIND_TENANT: "tenant",
}
_TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def check_tenant_name(name: str) -> str | None:
    """What is wrong with a tenant name, or None."""
    if not _TENANT_NAME.fullmatch(name):
        return "must be 1-63 lower-case letters, digits, '-' or '_', starting with a letter or digit"
    return None


@dataclass(frozen=True)
class Scope:
    """Where a configuration applies: one portal or one tenant."""

    portal_id: int = 0
    tenant: str = ""

    @property
    def label(self) -> str:
        """``tenant:<name>`` or ``portal:<id>``, for messages and metrics."""
        return f"tenant:{self.tenant}" if self.tenant else f"portal:{self.portal_id}"

    def key(self, kind: str) -> str:
        """The Redis key of this scope's current ``kind`` configuration."""
        return tenant_config_key(self.tenant, kind) if self.tenant else config_key(self.portal_id, kind)

    def history_key(self, kind: str) -> str:
        """The Redis key of this scope's ``kind`` version history."""
        if self.tenant:
            return tenant_config_history_key(self.tenant, kind)
        return config_history_key(self.portal_id, kind)


@dataclass(frozen=True)
class StoredVersion:
    """One stored version of a scope's configuration of one kind."""

    version: int
    document: config_pb2.ConfigDocument
    author: str = ""
    at_ms: int = 0
    restored: int = 0

    @property
    def empty(self) -> bool:
        """A cleared override (the scope inherits)."""
        return self.document.WhichOneof("kind") is None


class VersionConflict(Exception):
    """The version in force is not the one the caller expected."""

    def __init__(self, current: int) -> None:
        super().__init__(f"the version in force is {current}")
        self.current = current


def _parse(fields: dict[Any, Any]) -> StoredVersion | None:
    got = {as_str(k): v for k, v in fields.items()}
    if not got.get(ConfigEntry.VERSION):
        return None
    raw = got.get(ConfigEntry.DOCUMENT) or b""
    return StoredVersion(
        version=int(got[ConfigEntry.VERSION]),
        document=config_pb2.ConfigDocument.FromString(raw if isinstance(raw, bytes) else raw.encode()),
        author=as_str(got.get(ConfigEntry.AUTHOR)),
        at_ms=int(got.get(ConfigEntry.AT_MS) or 0),
        restored=int(got.get(ConfigEntry.RESTORED) or 0),
    )


_FIELDS = [
    ConfigEntry.VERSION,
    ConfigEntry.DOCUMENT,
    ConfigEntry.AUTHOR,
    ConfigEntry.AT_MS,
    ConfigEntry.RESTORED,
]

# KEYS: the version hash, the history stream. ARGV: expected version (-1: any), document,
# author, restored version, history cap. Returns {version, at_ms}, or {-1, current} on conflict.
_STORE = f"""
local current = tonumber(redis.call('HGET', KEYS[1], '{ConfigEntry.VERSION}') or '0')
if tonumber(ARGV[1]) >= 0 and current ~= tonumber(ARGV[1]) then return {{-1, current}} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = current + 1
local fields = {{'{ConfigEntry.VERSION}', v, '{ConfigEntry.DOCUMENT}', ARGV[2],
  '{ConfigEntry.AUTHOR}', ARGV[3], '{ConfigEntry.AT_MS}', now, '{ConfigEntry.RESTORED}', ARGV[4]}}
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[5], '*', unpack(fields))
return {{v, now}}
"""


async def load_version(redis: Redis, scope: Scope, kind: str) -> StoredVersion | None:
    """The version in force at ``scope`` (None: nothing ever stored)."""
    return _parse(await redis.hgetall(scope.key(kind)))


class StoreOptions(TypedDict, total=False):
    """How a version is stored: by whom, on which version in force, restoring which one."""

    author: Required[str]
    # The version the change was made on (None: whatever is in force).
    expected: int | None
    # The earlier version this one restores (0: none, a change of its own).
    restored: int


async def store_version(
    redis: Redis,
    scope: Scope,
    kind: str,
    document: config_pb2.ConfigDocument,
    **options: Unpack[StoreOptions],
) -> StoredVersion:
    """Stores ``document`` as the next version and announces it; raises :class:`VersionConflict`
    when ``expected`` is given and is not the version in force."""
    author, expected, restored = options["author"], options.get("expected"), options.get("restored", 0)
    raw = document.SerializeToString()
    version, at = await redis.eval(
        _STORE,
        2,
        scope.key(kind),
        scope.history_key(kind),
        -1 if expected is None else expected,
        raw,
        author,
        restored,
        HISTORY_MAX,
    )
    if int(version) < 0:
        raise VersionConflict(int(at))
    await announce(redis, scope, kind, int(version))
    return StoredVersion(int(version), document, author, int(at), restored)


async def version_history(
    redis: Redis, scope: Scope, kind: str, limit: int = HISTORY_MAX
) -> list[StoredVersion]:
    """Stored versions, newest first (at most the last :data:`HISTORY_MAX`)."""
    rows: Any = await redis.xrevrange(scope.history_key(kind), count=limit)
    return [v for _, fields in rows or [] if (v := _parse(fields or {})) is not None]


async def announce(redis: Redis, scope: Scope, kind: str, version: int) -> None:
    """Tells every replica that ``scope``'s ``kind`` changed."""
    await redis.publish(CONFIG_CHANGES_CHANNEL, f"{scope.label}|{kind}|{version}")


@dataclass(frozen=True)
class EffectiveConfig:
    """What a portal's configuration is made of above the default: per kind, the tenant's and
    the portal's version in force (None: no override at that layer)."""

    portal_id: int
    tenant: str = ""
    tenant_layer: dict[str, StoredVersion] = field(default_factory=dict)
    portal_layer: dict[str, StoredVersion] = field(default_factory=dict)

    def layers(self, kind: str) -> list[tuple[str, StoredVersion]]:
        """The non-empty overrides of ``kind``, lowest first, with their layer labels."""
        found = []
        if (t := self.tenant_layer.get(kind)) is not None and not t.empty:
            found.append((f"tenant:{self.tenant}", t))
        if (p := self.portal_layer.get(kind)) is not None and not p.empty:
            found.append((f"portal:{self.portal_id}", p))
        return found

    def versions(self, kind: str) -> tuple[int, int]:
        """(tenant version, portal version) of ``kind``: what identifies the combination."""
        t = self.tenant_layer.get(kind)
        p = self.portal_layer.get(kind)
        return (t.version if t else 0, p.version if p else 0)

    def limits(self) -> config_pb2.LimitsConfig:
        """The limits overrides merged field by field (the portal's win)."""
        merged = config_pb2.LimitsConfig()
        for _, stored in self.layers("limits"):
            merged.MergeFrom(stored.document.limits)
        return merged

    def pilot(self) -> tuple[config_pb2.PilotConfig, str] | None:
        """The pilot in force and its layer (the portal's own document wins), None without one."""
        layers = self.layers("pilot")
        if not layers:
            return None
        label, stored = layers[-1]
        return (stored.document.pilot, label) if stored.document.pilot.enabled else None


class PortalConfigCache:
    """This replica's view of portals' overrides: read on first use, kept ``ttl_s``, dropped when
    a change is announced. Portals never asked about are never read."""

    def __init__(
        self,
        redis: Redis,
        kinds: tuple[str, ...],
        *,
        ttl_s: float = CACHE_TTL_S,
        max_portals: int = 10_000,
    ) -> None:
        self.redis = redis
        self.kinds = kinds
        self.ttl_s = ttl_s
        self.max_portals = max_portals
        self._entries: OrderedDict[int, tuple[float, EffectiveConfig]] = OrderedDict()
        # Bumped by every invalidation: a read that started before one is not cached.
        self._epoch = 0
        self.reads = 0
        # Set while the change subscription is up (and what was cached before it was dropped).
        self.subscribed = asyncio.Event()

    async def get(self, portal_id: int) -> EffectiveConfig:
        """The portal's effective configuration (cached until it changes or expires)."""
        hit = self._entries.get(portal_id)
        if hit is not None and time.monotonic() < hit[0]:
            self._entries.move_to_end(portal_id)
            return hit[1]
        epoch = self._epoch
        effective = await self._read(portal_id)
        if epoch == self._epoch:
            self._entries[portal_id] = (time.monotonic() + self.ttl_s, effective)
            self._entries.move_to_end(portal_id)
            while len(self._entries) > self.max_portals:
                self._entries.popitem(last=False)
        return effective

    async def _read(self, portal_id: int) -> EffectiveConfig:
        self.reads += 1
        scope = Scope(portal_id=portal_id)
        names = ["tenant", *self.kinds]
        async with self.redis.pipeline(transaction=False) as pipe:
            for kind in names:
                pipe.hmget(scope.key(kind), _FIELDS)
            rows = await pipe.execute()
        portal_layer = {k: v for k, row in zip(names, rows, strict=True) if (v := _row(row)) is not None}
        member = portal_layer.get("tenant")
        tenant = member.document.tenant.tenant if member is not None and not member.empty else ""
        tenant_layer: dict[str, StoredVersion] = {}
        if tenant:
            group = Scope(tenant=tenant)
            async with self.redis.pipeline(transaction=False) as pipe:
                for kind in self.kinds:
                    pipe.hmget(group.key(kind), _FIELDS)
                rows = await pipe.execute()
            tenant_layer = {
                k: v for k, row in zip(self.kinds, rows, strict=True) if (v := _row(row)) is not None
            }
        return EffectiveConfig(portal_id, tenant, tenant_layer, portal_layer)

    def invalidate(self, scope_label: str) -> None:
        """Drops what is cached for ``portal:<id>`` or every portal of ``tenant:<name>``."""
        self._epoch += 1
        what, _, name = scope_label.partition(":")
        if what == "portal" and name.isdigit():
            self._entries.pop(int(name), None)
        elif what == "tenant":
            for portal, (_, eff) in list(self._entries.items()):
                if eff.tenant == name:
                    self._entries.pop(portal, None)
        else:
            self._entries.clear()

    async def listen(self) -> None:
        """Applies change announcements until cancelled (resubscribes after a lost connection;
        the TTL bounds what a gap costs)."""
        await follow_channel(
            self.redis,
            CONFIG_CHANGES_CHANNEL,
            lambda data: self.invalidate(data.split("|", 1)[0]),
            what="config-change",
            on_subscribed=self._subscribed,
            on_lost=self.subscribed.clear,
        )

    def _subscribed(self) -> None:
        # Whatever changed while unsubscribed is unknown: start afresh.
        self.invalidate("*")
        self.subscribed.set()


def _row(values: list[Any]) -> StoredVersion | None:
    return _parse(dict(zip(_FIELDS, values, strict=True)))
