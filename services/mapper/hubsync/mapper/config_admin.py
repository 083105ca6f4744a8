"""Changing per-portal and per-tenant configuration: validate, store a new version, list the
versions, roll back. Domain code: the gRPC servicer (``config_servicer``) only converts.

Validation happens before anything is stored, so a refused change leaves the version in force:

- mappings: each file parses (errors name ``<layer>/<file>:<line>: <path>``), no object type twice,
  and every target exists with a compatible type in the portal's HubSpot properties (for a
  tenant: in every portal that joined it), read fresh through writer;
- limits: at least one value, each in range;
- pilot: a short printable reason;
- tenant (portal scope only): a valid name, and the tenant's mappings fit the portal.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Unpack

from redis.asyncio import Redis

from hubsync.api.common.v1 import config_pb2
from hubsync.core.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from hubsync.core.keys import tenant_portals_key
from hubsync.core.portal_config import (
    HISTORY_MAX,
    KIND_NAMES,
    PortalConfigCache,
    Scope,
    StoredVersion,
    StoreOptions,
    VersionConflict,
    check_tenant_name,
    load_version,
    store_version,
    version_history,
)
from hubsync.mapper.mappings import LoadedMapping, MappingError
from hubsync.mapper.portal_mappings import MAPPINGS, PortalMappings, parse_override
from hubsync.mapper.properties import PropertyCatalog

__all__ = ["ConfigAdmin", "EffectiveMapping"]

MAX_BURST = 100_000
MAX_REASON = 200
# Bounds on what one version stores (every version is kept in Redis, up to HISTORY_MAX).
MAX_DOCUMENT_BYTES = 256 * 1024
MAX_FILES = 20
# Writer's answers that mean the portal's properties cannot be read until someone acts (connect
# it, re-authorize it), as opposed to a passing outage (UNAVAILABLE: try again).
_NOT_READABLE = {"UNAUTHENTICATED", "FAILED_PRECONDITION", "PERMISSION_DENIED", "NOT_FOUND"}
# The document field each kind is kept in.
_FIELD = {"mappings": "mappings", "limits": "limits", "pilot": "pilot", "tenant": "tenant"}


@dataclass(frozen=True)
class EffectiveMapping:
    """One layer's mapping of an object type in force for a portal: the layer and its source."""

    object_type: str
    layer: str
    source: str


def violations(errors: list[str]) -> dict[str, str]:
    """``<location>: ... : <what is wrong>`` lines as field → description: the location is the
    leading words that end in ':' (file and line, object type, path)."""
    found: dict[str, str] = {}
    for line in errors:
        words = line.split(" ")
        n = 0
        while n < len(words) - 1 and words[n].endswith(":"):
            n += 1
        where = " ".join(words[:n]).rstrip(":") or "document"
        what = " ".join(words[n:])
        key, i = where, 2
        while key in found:
            key, i = f"{where} ({i})", i + 1
        found[key] = what
    return found


class ConfigAdmin:
    """Validates and stores configuration versions (mapper's ConfigService)."""

    def __init__(
        self,
        redis: Redis,
        mappings: PortalMappings,
        catalog: PropertyCatalog | None,
    ) -> None:
        self.redis = redis
        self.mappings = mappings
        self.catalog = catalog

    @property
    def configs(self) -> PortalConfigCache:
        """The portal configuration cache the mappings read."""
        return self.mappings.configs

    # ---- reads -----------------------------------------------------------------------------------

    async def get(self, scope: Scope, kind: str) -> tuple[StoredVersion | None, str, list[EffectiveMapping]]:
        """The version in force at ``scope``; for a portal also its tenant and, for mappings,
        where each object type's mapping comes from."""
        _check_scope(scope, kind)
        current = await load_version(self.redis, scope, kind)
        if not scope.portal_id:
            return current, "", []
        self.configs.invalidate(scope.label)
        effective = await self.configs.get(scope.portal_id)
        rows: list[EffectiveMapping] = []
        if kind == MAPPINGS:
            composed = PortalMappings.compose(self.mappings.registry.snapshot(), effective)
            layer_of = {}
            for label, stored in effective.layers(MAPPINGS):
                with contextlib.suppress(MappingError):  # compose() skipped it too (and logged)
                    for item in parse_override(label, stored.document.mappings):
                        layer_of[item.mapping.object_type] = label
            rows = [
                EffectiveMapping(m.object_type, layer_of.get(m.object_type, "default"), m.source)
                for m in composed
            ]
        return current, effective.tenant, rows

    async def history(self, scope: Scope, kind: str, limit: int = 0) -> list[StoredVersion]:
        """Return the stored versions of a scope's configuration, newest first."""
        _check_scope(scope, kind)
        if limit < 0:
            raise InvalidArgument("invalid page size", violations={"page_size": "must not be negative"})
        return await version_history(self.redis, scope, kind, min(limit or HISTORY_MAX, HISTORY_MAX))

    # ---- changes ---------------------------------------------------------------------------------

    async def set(
        self,
        scope: Scope,
        kind: str,
        document: config_pb2.ConfigDocument,
        **options: Unpack[StoreOptions],
    ) -> StoredVersion:
        """Validates ``document`` for ``scope`` and stores it as the next version."""
        _check_scope(scope, kind)
        set_kind = document.WhichOneof("kind")
        if set_kind is not None and set_kind != _FIELD[kind]:
            raise InvalidArgument(
                "the document does not match the kind",
                violations={
                    f"document.{set_kind}": f"the request's kind is {kind}: set document.{_FIELD[kind]}"
                },
            )
        if set_kind is not None:
            _check_size(document)
            await self._validate(scope, kind, document)
        previous_tenant = ""
        if kind == "tenant":
            before = await load_version(self.redis, scope, kind)
            if before is not None and not before.empty:
                previous_tenant = before.document.tenant.tenant
        try:
            stored = await store_version(self.redis, scope, kind, document, **options)
        except VersionConflict as exc:
            raise Aborted(
                f"{scope.label} {kind}: version {exc.current} is in force, not {options.get('expected')}; "
                "read it again",
                reason="CONFIG_VERSION_CHANGED",
                metadata={"current_version": str(exc.current)},
            ) from None
        new_tenant = document.tenant.tenant if set_kind is not None and kind == "tenant" else ""
        if new_tenant:
            await self.redis.sadd(tenant_portals_key(new_tenant), str(scope.portal_id))
        if previous_tenant and previous_tenant != new_tenant:
            await self.redis.srem(tenant_portals_key(previous_tenant), str(scope.portal_id))
        # This replica applies its own change at once; the others on the announcement.
        self.configs.invalidate(scope.label)
        return stored

    async def rollback(
        self, scope: Scope, kind: str, version: int, *, author: str, expected: int | None = None
    ) -> StoredVersion:
        """Stores version ``version``'s document again, as a new version (validated again: the
        portal's properties may have changed since)."""
        _check_scope(scope, kind)
        if version <= 0:
            raise InvalidArgument(
                "invalid version", violations={"version": "must be a stored version (1, 2, ...)"}
            )
        for stored in await version_history(self.redis, scope, kind):
            if stored.version == version:
                return await self.set(
                    scope, kind, stored.document, author=author, expected=expected, restored=version
                )
        raise NotFound(
            f"{scope.label} {kind}: version {version} is not stored (the last {HISTORY_MAX} are kept)",
            reason="CONFIG_VERSION_NOT_FOUND",
        )

    # ---- validation ------------------------------------------------------------------------------

    async def _validate(self, scope: Scope, kind: str, document: config_pb2.ConfigDocument) -> None:
        if kind == MAPPINGS:
            await self._validate_mappings(scope, document.mappings)
        elif kind == "limits":
            _validate_limits(document.limits)
        elif kind == "pilot":
            reason = document.pilot.reason
            if len(reason) > MAX_REASON or not reason.isprintable():
                raise InvalidArgument(
                    "invalid pilot reason",
                    violations={"document.pilot.reason": f"at most {MAX_REASON} printable characters"},
                )
        elif kind == "tenant":
            name = document.tenant.tenant
            if (problem := check_tenant_name(name)) is not None:
                raise InvalidArgument("invalid tenant", violations={"document.tenant.tenant": problem})
            group = await load_version(self.redis, Scope(tenant=name), MAPPINGS)
            if group is not None and not group.empty:
                loaded = _parse_or_refuse(f"tenant:{name}", group.document.mappings)
                await self._check_properties([scope.portal_id], loaded)

    async def _validate_mappings(self, scope: Scope, config: config_pb2.MappingsConfig) -> None:
        loaded = _parse_or_refuse(scope.label, config)
        if scope.portal_id:
            portals = [scope.portal_id]
        else:
            members = await self.redis.smembers(tenant_portals_key(scope.tenant))
            portals = sorted(int(m) for m in members if m.isdigit())
        await self._check_properties(portals, loaded)

    async def _check_properties(self, portals: list[int], loaded: list[LoadedMapping]) -> None:
        if self.catalog is None:
            return
        errors: list[str] = []
        for portal in portals:
            # Fresh definitions: a property created a minute ago must count.
            self.catalog.forget(portal)
            try:
                errors += await self.catalog.check(portal, loaded)
            except Unavailable as exc:
                if exc.metadata.get("writer_code") not in _NOT_READABLE:
                    raise
                raise FailedPrecondition(
                    f"portal {portal}: its HubSpot properties cannot be read "
                    f"({exc.metadata['writer_code']}); connect the portal first: mapping overrides are "
                    "validated against them. Nothing was changed.",
                    reason="PORTAL_PROPERTIES_UNREADABLE",
                    metadata={"portal_id": str(portal)},
                ) from None
        if errors:
            raise InvalidArgument(
                "the mappings do not fit the portal's HubSpot properties; nothing was changed",
                violations=violations(errors),
                reason="MAPPING_TARGETS_INVALID",
            )


def _parse_or_refuse(layer: str, config: config_pb2.MappingsConfig) -> list[LoadedMapping]:
    try:
        return parse_override(layer, config)
    except MappingError as exc:
        raise InvalidArgument(
            "invalid mapping override; nothing was changed",
            violations=violations(exc.errors),
            reason="MAPPING_INVALID",
        ) from None


def _check_size(document: config_pb2.ConfigDocument) -> None:
    bad: dict[str, str] = {}
    if document.ByteSize() > MAX_DOCUMENT_BYTES:
        bad["document"] = f"at most {MAX_DOCUMENT_BYTES // 1024} KiB"
    if len(document.mappings.files) > MAX_FILES:
        bad["document.mappings.files"] = f"at most {MAX_FILES} files"
    if bad:
        raise InvalidArgument("configuration document too large", violations=bad)


def _validate_limits(limits: config_pb2.LimitsConfig) -> None:
    bad: dict[str, str] = {}
    if not limits.HasField("burst_limit") and not limits.HasField("daily_limit"):
        bad["document.limits"] = "set burst_limit or daily_limit (or clear the override)"
    if limits.HasField("burst_limit") and not 1 <= limits.burst_limit <= MAX_BURST:
        bad["document.limits.burst_limit"] = f"must be 1 to {MAX_BURST} requests per burst window"
    if limits.HasField("daily_limit") and limits.daily_limit < 0:
        bad["document.limits.daily_limit"] = "must be 0 (no daily budget) or more"
    if bad:
        raise InvalidArgument("invalid limits", violations=bad)


def _check_scope(scope: Scope, kind: str) -> None:
    bad: dict[str, str] = {}
    if kind not in KIND_NAMES.values():
        bad["kind"] = "must be CONFIG_KIND_MAPPINGS, _LIMITS, _PILOT or _TENANT"
    if bool(scope.portal_id) == bool(scope.tenant):
        bad["scope"] = "set exactly one of portal_id and tenant"
    elif scope.portal_id < 0:
        bad["scope.portal_id"] = "must be a positive HubSpot portal id"
    elif scope.tenant and (problem := check_tenant_name(scope.tenant)) is not None:
        bad["scope.tenant"] = problem
    elif scope.tenant and kind == "tenant":
        bad["kind"] = "a tenant does not belong to a tenant: CONFIG_KIND_TENANT is for portals"
    if bad:
        raise InvalidArgument("invalid configuration scope", violations=bad)
