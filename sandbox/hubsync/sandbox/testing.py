"""Helpers for tests that use the sandbox: a webhook receiver that records what arrives."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from .server import AsgiServer


@dataclass
class ReceivedRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class ReceiverBehaviour:
    """What the receiver answers: ``statuses`` are used in order, then ``default_status``."""

    statuses: list[int] = field(default_factory=list)
    default_status: int = 200
    delay_s: float = 0.0


class WebhookReceiver(AsgiServer):
    """An HTTP endpoint on 127.0.0.1 that records every request (a stand-in for ingress).

    ``url`` is the full target URL (``http://127.0.0.1:PORT/webhooks/hubspot``).
    """

    def __init__(self, path: str = "/webhooks/hubspot", behaviour: ReceiverBehaviour | None = None):
        self.path = path
        self.behaviour = behaviour or ReceiverBehaviour()
        self.requests: list[ReceivedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.on_request: Callable[[ReceivedRequest], Awaitable[None]] | None = None
        super().__init__(self._asgi)

    @property
    def url(self) -> str:
        return self.base_url + self.path

    def events(self) -> list[dict[str, Any]]:
        """Every event of every request, in arrival order (duplicates included)."""
        return [e for r in self.requests for e in r.json()]

    async def _asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        qs = scope.get("query_string", b"").decode()
        url = f"{self.base_url}{scope['path']}" + (f"?{qs}" if qs else "")
        req = ReceivedRequest(scope["method"], url, headers, body)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            b = self.behaviour
            status = b.statuses.pop(0) if b.statuses else b.default_status
            if b.delay_s:
                await asyncio.sleep(b.delay_s)
            self.requests.append(req)
            if self.on_request is not None:
                await self.on_request(req)
        finally:
            self.in_flight -= 1
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})


class ThreadedSandbox:
    """Runs a ``SandboxServer`` in a background thread with its own event loop.

    For synchronous clients (HubSpot's official SDK uses urllib3): ``with ThreadedSandbox(cfg) as sb:``.
    ``sb.run(coro)`` runs a coroutine in the server's loop, e.g. ``sb.run(sb.state.webhooks.wait_idle(5))``.
    """

    def __init__(self, config: Any = None, extra: list[AsgiServer] | None = None):
        from .server import SandboxServer

        self.server = SandboxServer(config)
        self.extra = extra or []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: Any = None

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def state(self) -> Any:
        return self.server.state

    def run(self, coro: Awaitable[Any], timeout: float = 30) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)  # type: ignore[arg-type]

    def __enter__(self) -> ThreadedSandbox:
        import threading

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sandbox", daemon=True)
        self._thread.start()
        for s in self.extra:
            self.run(s.start())
        self.run(self.server.start())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        self.run(self.server.stop())
        for s in self.extra:
            self.run(s.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
