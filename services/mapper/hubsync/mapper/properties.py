"""HubSpot's property definitions (through writer's ListProperties), cached, and the checks of
mappings against them: every target exists with a compatible type, the id property is unique."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

import grpc

from hubsync.api.writer.v1 import writer_pb2, writer_pb2_grpc
from hubsync.core.errors import Unavailable
from hubsync.mapper.mappings import LoadedMapping

__all__ = ["PropertyCatalog"]

# Which HubSpot property types each transform can write to (and read from).
COMPATIBLE: dict[str, frozenset[str]] = {
    "string": frozenset({"string", "phone_number", "enumeration"}),
    "number": frozenset({"number"}),
    "integer": frozenset({"number"}),
    "bool": frozenset({"bool", "enumeration"}),
    "date": frozenset({"date"}),
    "datetime": frozenset({"datetime", "date"}),
    "split": frozenset({"enumeration", "string"}),
    "enum": frozenset({"enumeration", "string", "bool"}),
}


class PropertyCatalog:
    """Property definitions per (portal, object type), cached for ``ttl_s``."""

    def __init__(self, writer: writer_pb2_grpc.WriterServiceStub, ttl_s: float = 300.0):
        self.writer = writer
        self.ttl_s = ttl_s
        self._cache: dict[tuple[int, str], tuple[float, dict[str, writer_pb2.Property]]] = {}
        self._locks: dict[tuple[int, str], asyncio.Lock] = {}

    async def get(self, portal_id: int, object_type: str) -> dict[str, writer_pb2.Property]:
        """Return the property definitions of a portal's object type (cached for the TTL)."""
        key = (portal_id, object_type)
        hit = self._cache.get(key)
        if hit and time.monotonic() < hit[0]:
            return hit[1]
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            hit = self._cache.get(key)
            if hit and time.monotonic() < hit[0]:
                return hit[1]
            try:
                reply = await self.writer.ListProperties(
                    writer_pb2.ListPropertiesRequest(portal_id=portal_id, object_type=object_type), timeout=30
                )
            except grpc.aio.AioRpcError as exc:
                raise Unavailable(
                    f"cannot read HubSpot properties of {object_type} through writer: {exc.code().name}",
                    retry_after=1.0,
                    metadata={"portal_id": str(portal_id), "writer_code": exc.code().name},
                ) from None
            props = {p.name: p for p in reply.properties}
            self._cache[key] = (time.monotonic() + self.ttl_s, props)
            return props

    def invalidate(self) -> None:
        """Drop every cached definition (the next checks read them afresh)."""
        self._cache.clear()

    def forget(self, portal_id: int) -> None:
        """Drops one portal's cached definitions (the next check reads them afresh)."""
        for key in [k for k in self._cache if k[0] == portal_id]:
            self._cache.pop(key, None)

    async def check(self, portal_id: int, loaded: Iterable[LoadedMapping]) -> list[str]:
        """Every problem of the mappings against the portal's properties (empty when fine)."""
        errors: list[str] = []
        for item in loaded:
            m = item.mapping
            props = await self.get(portal_id, m.object_type)
            where = f"{item.source}: {m.object_type}"
            idp = props.get(m.id.hubspot)
            if idp is None:
                errors.append(
                    f"{where}: id.hubspot: property {m.id.hubspot!r} does not exist in portal {portal_id}"
                )
            elif not idp.has_unique_value and not (m.object_type == "contacts" and m.id.hubspot == "email"):
                errors.append(
                    f"{where}: id.hubspot: property {m.id.hubspot!r} is not unique (hasUniqueValue) "
                    "and cannot identify records"
                )
            for i, f in enumerate(m.fields):
                for name in f.properties:
                    p = props.get(name)
                    path = f"{where}: fields[{i}].hubspot"
                    if p is None:
                        close = [n for n in props if n.replace("_", "") == name.replace("_", "")]
                        hint = f" (did you mean {close[0]!r}?)" if close else ""
                        errors.append(f"{path}: property {name!r} does not exist in portal {portal_id}{hint}")
                        continue
                    if isinstance(f.hubspot, list):
                        continue
                    allowed = COMPATIBLE[f.transform]
                    if p.type not in allowed:
                        errors.append(
                            f"{path}: property {name!r} has type {p.type}, which transform "
                            f"{f.transform} cannot map (needs {', '.join(sorted(allowed))})"
                        )
                    if f.transform == "enum" and p.options and f.values:
                        unknown = sorted(set(f.values) - set(p.options))
                        if unknown:
                            errors.append(f"{path}: values: {unknown} are not options of {name!r}")
        return errors
