"""The gRPC face of the vault: proto in → :class:`TokenVault` call → proto out."""

from __future__ import annotations

import grpc
from google.protobuf import timestamp_pb2

from hubsync.api.auth.v1 import auth_pb2, auth_pb2_grpc
from hubsync.auth.store import (
    KIND_OAUTH,
    KIND_PRIVATE_APP,
    STATE_ACTIVE,
    STATE_NEEDS_REAUTH,
    STATE_REVOKED,
    Connection,
)
from hubsync.auth.vault import TokenVault
from hubsync.core.errors import InvalidArgument

__all__ = ["MAX_MIN_TTL_S", "AuthServicer", "connection_proto"]

MAX_MIN_TTL_S = 3600
_KINDS = {KIND_OAUTH: auth_pb2.CONNECTION_KIND_OAUTH, KIND_PRIVATE_APP: auth_pb2.CONNECTION_KIND_PRIVATE_APP}
_STATES = {
    STATE_ACTIVE: auth_pb2.CONNECTION_STATE_ACTIVE,
    STATE_NEEDS_REAUTH: auth_pb2.CONNECTION_STATE_NEEDS_REAUTH,
    STATE_REVOKED: auth_pb2.CONNECTION_STATE_REVOKED,
}


def _ts(ms: int) -> timestamp_pb2.Timestamp | None:
    if not ms:
        return None
    return timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def connection_proto(conn: Connection) -> auth_pb2.Connection:
    """Convert a connection to its proto, without any secret."""
    return auth_pb2.Connection(
        portal_id=conn.portal_id,
        tenant=conn.tenant,
        kind=_KINDS.get(conn.kind, auth_pb2.CONNECTION_KIND_UNSPECIFIED),
        state=_STATES.get(conn.state, auth_pb2.CONNECTION_STATE_UNSPECIFIED),
        scopes=conn.scopes,
        access_token_expire_time=_ts(conn.expires_ms),
        create_time=_ts(conn.created_ms),
        update_time=_ts(conn.updated_ms),
        hub_domain=conn.hub_domain,
        key_id=conn.key_id,
    )


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    """``hubsync.api.auth.v1.AuthService`` over a :class:`TokenVault`."""

    def __init__(self, vault: TokenVault) -> None:
        """Serve ``vault``."""
        self.vault = vault

    async def BeginAuthorization(
        self, request: auth_pb2.BeginAuthorizationRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.BeginAuthorizationResponse:
        """Begin an OAuth authorization: a start link and an authorize URL."""
        pending = await self.vault.begin_authorization(
            request.tenant, list(request.scopes), list(request.optional_scopes), request.redirect_uri
        )
        return auth_pb2.BeginAuthorizationResponse(
            authorize_url=pending.authorize_url,
            state=pending.state,
            expire_time=_ts(pending.expires_ms),
            start_url=pending.start_url,
        )

    async def StartAuthorization(
        self, request: auth_pb2.StartAuthorizationRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.StartAuthorizationResponse:
        """Redeem a start link, binding its state to the browser."""
        started = await self.vault.start_authorization(request.ticket, request.browser_binding)
        return auth_pb2.StartAuthorizationResponse(
            authorize_url=started.authorize_url, state=started.state, expire_time=_ts(started.expires_ms)
        )

    async def CompleteAuthorization(
        self, request: auth_pb2.CompleteAuthorizationRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.CompleteAuthorizationResponse:
        """Complete an authorization with the redirect's code and state."""
        conn = await self.vault.complete_authorization(request.code, request.state, request.browser_binding)
        return auth_pb2.CompleteAuthorizationResponse(connection=connection_proto(conn))

    async def CreatePrivateAppConnection(
        self, request: auth_pb2.CreatePrivateAppConnectionRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.CreatePrivateAppConnectionResponse:
        """Store (or rotate) a private-app token."""
        conn = await self.vault.create_private_app(
            request.portal_id, request.tenant, request.access_token, list(request.scopes)
        )
        return auth_pb2.CreatePrivateAppConnectionResponse(connection=connection_proto(conn))

    async def GetConnection(
        self, request: auth_pb2.GetConnectionRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.GetConnectionResponse:
        """Return a connection without secrets."""
        conn = await self.vault.get_connection(request.portal_id)
        return auth_pb2.GetConnectionResponse(connection=connection_proto(conn))

    async def ListConnections(
        self, request: auth_pb2.ListConnectionsRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ListConnectionsResponse:
        """Return a page of connections without secrets."""
        conns, token = await self.vault.list_connections(request.page_size, request.page_token)
        return auth_pb2.ListConnectionsResponse(
            connections=[connection_proto(c) for c in conns], next_page_token=token
        )

    async def RevokeConnection(
        self, request: auth_pb2.RevokeConnectionRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.RevokeConnectionResponse:
        """Revoke a connection at HubSpot and wipe its secrets."""
        conn = await self.vault.revoke(request.portal_id)
        return auth_pb2.RevokeConnectionResponse(connection=connection_proto(conn))

    async def GetAccessToken(
        self, request: auth_pb2.GetAccessTokenRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.GetAccessTokenResponse:
        """Hand out an access token, refreshed first if it lives too short."""
        min_ttl = request.min_ttl.ToTimedelta().total_seconds() if request.HasField("min_ttl") else None
        # Above a token's whole life (HubSpot: 1800 s) every call would refresh; an hour is the cap.
        if min_ttl is not None and not 0 <= min_ttl <= MAX_MIN_TTL_S:
            raise InvalidArgument(
                f"min_ttl must be between 0 and {MAX_MIN_TTL_S} s", {"min_ttl": f"0 to {MAX_MIN_TTL_S} s"}
            )
        issued = await self.vault.get_access_token(request.portal_id, min_ttl)
        return auth_pb2.GetAccessTokenResponse(
            access_token=issued.access_token, expire_time=_ts(issued.expires_ms)
        )

    async def InvalidateAccessToken(
        self, request: auth_pb2.InvalidateAccessTokenRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.InvalidateAccessTokenResponse:
        """After a 401: refresh if the caller's token is still the current one."""
        issued, refreshed = await self.vault.invalidate_access_token(request.portal_id, request.access_token)
        return auth_pb2.InvalidateAccessTokenResponse(
            access_token=issued.access_token, expire_time=_ts(issued.expires_ms), refreshed=refreshed
        )

    async def RotateKeys(
        self, request: auth_pb2.RotateKeysRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.RotateKeysResponse:
        """Re-seal every connection under the key ring's active key."""
        active, count = await self.vault.rotate_keys()
        return auth_pb2.RotateKeysResponse(active_key_id=active, reencrypted_count=count)
