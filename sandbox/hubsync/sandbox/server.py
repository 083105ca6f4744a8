"""Runs the sandbox with uvicorn inside the current event loop (tests) or standalone."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from types import TracebackType
from typing import Any, Self

import uvicorn

from .app import create_app
from .config import SandboxConfig
from .state import SandboxState


class AsgiServer:
    """Serves an ASGI app with uvicorn in the running event loop, on ``host:port`` (0 = free port)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0):
        self.app = app
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        # proto must be IPPROTO_TCP (not 0): asyncio sets TCP_NODELAY on accepted connections only
        # then, and without it every response waits ~40 ms for Nagle + delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._sock = sock
        cfg = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="auto",
            interface="asgi3",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(cfg)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises the start-up error
                raise RuntimeError("uvicorn stopped during start-up")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        server, task = self._server, self._task
        if server is not None and task is not None:
            server.should_exit = True
            if not task.done() and all(hasattr(server, a) for a in ("servers", "server_state", "lifespan")):
                await self._fast_shutdown(server, task)
            else:
                await task
        if self._sock is not None:
            self._sock.close()
        self._server = None
        self._task = None

    @staticmethod
    async def _fast_shutdown(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
        """uvicorn's own shutdown sleeps 0.1 s twice; tests start and stop many servers, so do the
        same steps (stop accepting, close connections, lifespan shutdown) without the sleeps."""
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for srv in server.servers:
            srv.close()
        for conn in list(server.server_state.connections):
            conn.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while server.server_state.connections and loop.time() < deadline:  # noqa: ASYNC110 - uvicorn offers no event to wait on
            await asyncio.sleep(0.002)
        for t in list(server.server_state.tasks):
            t.cancel()
        await server.lifespan.shutdown()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


class SandboxServer(AsgiServer):
    """``async with SandboxServer(config) as sb:`` serves the sandbox on 127.0.0.1.

    Attributes:
        base_url: e.g. ``http://127.0.0.1:54321``.
        state: the live ``SandboxState`` (objects, tokens, logs, webhooks).
        config: the ``SandboxConfig`` it runs with.
    """

    def __init__(self, config: SandboxConfig | None = None, host: str = "127.0.0.1", port: int = 0):
        self.config = config or SandboxConfig()
        self.state = SandboxState(self.config)
        super().__init__(create_app(state=self.state), host, port)

    async def __aenter__(self) -> SandboxServer:
        await self.start()
        return self
