"""ConfigService over gRPC: proto in → :class:`ConfigAdmin` → proto out."""

from __future__ import annotations

import grpc

from hubsync.api.mapper.v1 import config_pb2, config_pb2_grpc
from hubsync.core.callers import current_caller
from hubsync.core.errors import InvalidArgument
from hubsync.core.portal_config import KIND_NAMES, Scope, StoredVersion
from hubsync.mapper.config_admin import ConfigAdmin

__all__ = ["ConfigServicer"]


def _scope(scope: config_pb2.ConfigScope) -> Scope:
    return Scope(portal_id=scope.portal_id, tenant=scope.tenant)


def _kind(kind: int) -> str:
    name = KIND_NAMES.get(kind)  # type: ignore[call-overload]
    if name is None:
        raise InvalidArgument(
            "invalid kind", violations={"kind": "must be CONFIG_KIND_MAPPINGS, _LIMITS, _PILOT or _TENANT"}
        )
    return str(name)


def _version(stored: StoredVersion | None) -> config_pb2.ConfigVersion:
    if stored is None:
        return config_pb2.ConfigVersion()
    pb = config_pb2.ConfigVersion(
        version=stored.version,
        author=stored.author,
        restored_version=stored.restored,
    )
    pb.document.CopyFrom(stored.document)
    pb.create_time.FromMilliseconds(stored.at_ms)
    return pb


def _expected(request: config_pb2.SetConfigRequest | config_pb2.RollbackConfigRequest) -> int | None:
    return request.expected_version if request.HasField("expected_version") else None


def _author() -> str:
    return current_caller.get() or "anonymous"


class ConfigServicer(config_pb2_grpc.ConfigServiceServicer):
    """ConfigService: proto in → :class:`ConfigAdmin` → proto out."""

    def __init__(self, admin: ConfigAdmin) -> None:
        self.admin = admin

    async def GetConfig(
        self, request: config_pb2.GetConfigRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.GetConfigResponse:
        """Return a scope's current configuration, its tenant and the mappings in force."""
        current, tenant, effective = await self.admin.get(_scope(request.scope), _kind(request.kind))
        return config_pb2.GetConfigResponse(
            current=_version(current),
            tenant=tenant,
            effective_mappings=[
                config_pb2.EffectiveMapping(object_type=e.object_type, layer=e.layer, source=e.source)
                for e in effective
            ],
        )

    async def SetConfig(
        self, request: config_pb2.SetConfigRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.SetConfigResponse:
        """Store a new version of a scope's configuration (checked first)."""
        stored = await self.admin.set(
            _scope(request.scope),
            _kind(request.kind),
            request.document,
            author=_author(),
            expected=_expected(request),
        )
        return config_pb2.SetConfigResponse(version=_version(stored))

    async def ListConfigVersions(
        self, request: config_pb2.ListConfigVersionsRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.ListConfigVersionsResponse:
        """Return the stored versions of a scope's configuration, newest first."""
        versions = await self.admin.history(_scope(request.scope), _kind(request.kind), request.page_size)
        return config_pb2.ListConfigVersionsResponse(versions=[_version(v) for v in versions])

    async def RollbackConfig(
        self, request: config_pb2.RollbackConfigRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.RollbackConfigResponse:
        """Make an earlier version of a scope's configuration current again."""
        stored = await self.admin.rollback(
            _scope(request.scope),
            _kind(request.kind),
            request.version,
            author=_author(),
            expected=_expected(request),
        )
        return config_pb2.RollbackConfigResponse(version=_version(stored))
