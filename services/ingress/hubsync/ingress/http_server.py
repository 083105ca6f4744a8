"""The HTTP side of ingress: the Starlette app and a uvicorn server sharing the gRPC loop.

The server binds when the service is built (so the port is known before anything is called) and
serves as a background task of the service. Stopping it is graceful: stop accepting, let in-flight
requests finish (they are awaiting their Redis commit), then return.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import uvicorn
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.metrics import NoOpMeterProvider
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from hubsync.core.telemetry import scrub_url_attributes
from hubsync.ingress.http_protocol import EdgeLimits, edge_protocol
from hubsync.ingress.webhooks import PATH as WEBHOOK_PATH

__all__ = ["HttpServer", "build_app"]

log = logging.getLogger(__name__)


def build_app(
    webhook: ASGIApp,
    oauth_callback: Callable[[Request], Awaitable[Response]],
    oauth_start_page: Callable[[Request], Awaitable[Response]],
    oauth_start: Callable[[Request], Awaitable[Response]],
    health: Callable[[], Awaitable[bool]],
    *,
    server_spans: bool = True,
) -> ASGIApp:
    """Return the ingress ASGI app: the webhook route first, Starlette for the rest.

    ``POST /webhooks/hubspot`` goes straight to ``webhook`` (it opens its own server span);
    every other request goes through Starlette (405 for a wrong method, 404, the OAuth start link
    and callback, health), with the OpenTelemetry ASGI middleware's server span unless
    ``server_spans`` is off.
    """

    async def healthz(_request: Request) -> Response:
        if await health():
            return PlainTextResponse("ok")
        return PlainTextResponse("redis unavailable", status_code=503)

    async def webhook_route(request: Request) -> Response:  # pragma: no cover - dispatched first
        raise AssertionError("POST /webhooks/hubspot is dispatched before routing")

    starlette = Starlette(
        routes=[
            Route(WEBHOOK_PATH, webhook_route, methods=["POST"]),
            Route("/oauth/start", oauth_start_page, methods=["GET"]),
            Route("/oauth/start", oauth_start, methods=["POST"]),
            Route("/oauth/callback", oauth_callback, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )
    others: ASGIApp = starlette
    if server_spans:
        # No per-message receive/send spans and no generic HTTP metrics: together they cost more
        # than the request they describe.
        others = OpenTelemetryMiddleware(
            starlette,
            excluded_urls="healthz",
            exclude_spans=["receive", "send"],
            meter_provider=NoOpMeterProvider(),
            # The callback's query holds the OAuth code and state: never recorded.
            server_request_hook=scrub_url_attributes,
        )

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == WEBHOOK_PATH and scope["method"] == "POST":
            await webhook(scope, receive, send)
        else:
            await others(scope, receive, send)

    return app


class HttpServer:
    """uvicorn in the current event loop, without its signal handling (the service owns signals).

    ``limits`` bound how long reading a request may take and how large its headers may be
    (:mod:`hubsync.ingress.http_protocol`); past ``max_connections`` open connections (or
    requests in flight) a request is answered 503, which HubSpot retries.
    """

    def __init__(
        self,
        app: ASGIApp,
        host: str,
        port: int,
        grace_s: float,
        *,
        limits: EdgeLimits,
        max_connections: int | None = None,
    ) -> None:
        """Configure uvicorn with the edge protocol's limits; nothing listens until :meth:`bind`."""
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            http=edge_protocol(limits),
            ws="none",  # no WebSocket route: an upgrade request is an ordinary request
            limit_concurrency=max_connections,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            # The public URL is configured, not inferred: X-Forwarded-* headers are not trusted.
            proxy_headers=False,
            timeout_graceful_shutdown=max(int(grace_s), 1),
            timeout_keep_alive=30,
            backlog=2048,
        )
        self.server = uvicorn.Server(config)
        self.port = 0

    async def bind(self) -> int:
        """Open the listening socket; returns the bound port."""
        config = self.server.config
        if not config.loaded:
            config.load()
        self.server.lifespan = config.lifespan_class(config)
        await self.server.startup()
        sockets = self.server.servers[0].sockets
        self.port = int(sockets[0].getsockname()[1])
        return self.port

    async def serve(self) -> None:
        """Run until cancelled; then drains in-flight requests and closes."""
        try:
            await self.server.main_loop()
        finally:
            self.server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.shield(self.server.shutdown())
