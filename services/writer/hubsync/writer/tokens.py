"""Where the writer gets HubSpot access tokens: auth's vault, over gRPC.

:class:`TokenSource` is the small interface the HubSpot client needs; :class:`AuthTokenSource`
asks auth (``GetAccessToken``, ``InvalidateAccessToken`` after a 401) and caches each portal's
token until shortly before it expires, so a busy writer does not call auth per request.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

import grpc

from hubsync.api.auth.v1 import auth_pb2, auth_pb2_grpc
from hubsync.core.errors import FailedPrecondition, Unauthenticated, Unavailable, error_info

__all__ = [
    "AuthTokenSource",
    "StaticTokenSource",
    "TokenSource",
]


class TokenSource(Protocol):
    """What the HubSpot client needs of a token provider."""

    async def token(self, portal_id: int) -> str:
        """Return a bearer token for ``portal_id``."""
        ...

    async def invalidate(self, portal_id: int, token: str) -> str:
        """Report that HubSpot answered 401 to ``token``; returns the token to use now."""
        ...


class StaticTokenSource:
    """One fixed token per portal (unit tests, scripts)."""

    def __init__(self, tokens: dict[int, str]) -> None:
        """Serve the given token of each portal."""
        self.tokens = dict(tokens)

    async def token(self, portal_id: int) -> str:
        """Return the portal's token (FAILED_PRECONDITION when there is none)."""
        try:
            return self.tokens[portal_id]
        except KeyError:
            raise FailedPrecondition(f"no connection for portal {portal_id}") from None

    async def invalidate(self, portal_id: int, token: str) -> str:
        """Return the same token (a static source cannot refresh)."""
        return await self.token(portal_id)


class AuthTokenSource:
    """Tokens from auth's vault, cached per portal until ``refresh_margin_s`` before expiry."""

    def __init__(self, stub: auth_pb2_grpc.AuthServiceStub, refresh_margin_s: float = 120.0) -> None:
        """Ask auth through ``stub``; keep each token until ``refresh_margin_s`` before it expires."""
        self._stub = stub
        self._margin = refresh_margin_s
        self._cache: dict[int, tuple[str, float]] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    async def token(self, portal_id: int) -> str:
        """Return the portal's token, from the cache or from auth."""
        cached = self._cache.get(portal_id)
        if cached and cached[1] > time.monotonic():
            return cached[0]
        lock = self._locks.setdefault(portal_id, asyncio.Lock())
        async with lock:
            cached = self._cache.get(portal_id)
            if cached and cached[1] > time.monotonic():
                return cached[0]
            try:
                reply: auth_pb2.GetAccessTokenResponse = await self._stub.GetAccessToken(
                    auth_pb2.GetAccessTokenRequest(portal_id=portal_id), timeout=15
                )
            except grpc.aio.AioRpcError as exc:
                raise _translate(exc, portal_id) from None
            self._store(portal_id, reply.access_token, reply)
            return reply.access_token

    async def invalidate(self, portal_id: int, token: str) -> str:
        """Tell auth the token was refused; return the new one."""
        self._cache.pop(portal_id, None)
        try:
            reply: auth_pb2.InvalidateAccessTokenResponse = await self._stub.InvalidateAccessToken(
                auth_pb2.InvalidateAccessTokenRequest(portal_id=portal_id, access_token=token), timeout=15
            )
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, portal_id) from None
        self._store(portal_id, reply.access_token, reply)
        return reply.access_token

    def _store(self, portal_id: int, token: str, reply: object) -> None:
        expire = getattr(reply, "expire_time", None)
        ttl = 300.0
        if expire is not None and reply.HasField("expire_time"):  # type: ignore[attr-defined]
            ttl = max(expire.seconds - time.time() - self._margin, 0.0)
        self._cache[portal_id] = (token, time.monotonic() + ttl)


def _translate(exc: grpc.aio.AioRpcError, portal_id: int) -> Exception:
    info = error_info(exc)
    reason = info.reason if info else exc.code().name
    if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
        return FailedPrecondition(f"portal {portal_id}: {exc.details()}", reason=reason)
    if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAUTHENTICATED):
        return Unauthenticated(f"no usable connection for portal {portal_id}", reason=reason)
    return Unavailable(f"auth unavailable: {exc.code().name}", retry_after=1.0)
