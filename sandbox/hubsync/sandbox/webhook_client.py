"""A lean HTTP/1.1 client for webhook deliveries: ``POST`` with keep-alive, one pool per origin.

The dispatcher sends one request per (app, portal) batch; with many portals nearly every edit is
its own request. httpx/httpcore's pool scans every pooled connection and every queued request on
each request (and checks each idle socket with a ``select``), so its cost per request grows with
the connections in use: at 1,000 portals it took ~90 % of the sandbox's CPU. This client keeps,
per origin, a stack of idle kept-alive connections and parses answers with httptools (C), so a
request costs the same whatever the number of connections.

Only what a webhook delivery needs: ``http://`` URLs (the dispatcher falls back to httpx for
anything else), a body with ``Content-Length``, answers with ``Content-Length``, chunked or
read-to-close bodies (the body is read and dropped: only the status matters). A kept-alive
connection the server closed before answering (its idle timeout) is retried once on a new
connection, as a client does when a reused connection fails before any byte of the answer.
"""

from __future__ import annotations

import asyncio
from typing import cast
from urllib.parse import urlsplit

import httptools

__all__ = ["WebhookClient", "WebhookClientError"]


class WebhookClientError(Exception):
    """The connection failed or the answer could not be parsed (a failed attempt)."""


class _Connection(asyncio.Protocol):
    """One TCP connection: one request at a time, its answer parsed as it arrives."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self._parser = httptools.HttpResponseParser(self)
        self._answer: asyncio.Future[int] | None = None
        self._status = 0
        self._got_bytes = False

    # ---- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(WebhookClientError("unexpected upgrade"))
        except httptools.HttpParserError as exc:
            self._fail(WebhookClientError(f"bad answer: {exc}"))

    def eof_received(self) -> bool | None:
        self._end()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(exc)

    def _end(self, exc: Exception | None = None) -> None:
        self.closed = True
        answer, self._answer = self._answer, None
        if answer is None or answer.done():
            return
        if self._status:
            # The answer's head arrived: a body delimited by the connection's end is complete
            # now (only the status matters).
            answer.set_result(self._status)
        else:
            answer.set_exception(WebhookClientError(f"connection closed: {exc or 'by the server'}"))

    # ---- httptools callbacks ------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_message_complete(self) -> None:
        answer, self._answer = self._answer, None
        if not self._parser.should_keep_alive():
            self.close()
        if answer is not None and not answer.done():
            answer.set_result(self._status)

    # ---- use ------------------------------------------------------------------------------------

    def _fail(self, exc: Exception) -> None:
        answer, self._answer = self._answer, None
        if answer is not None and not answer.done():
            answer.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    @property
    def answered_nothing(self) -> bool:
        """Whether the last request failed before any byte of its answer arrived."""
        return not self._got_bytes

    async def request(self, raw: bytes) -> int:
        """Send one whole request; returns the answer's status once its body is read."""
        assert self.transport is not None
        self._got_bytes = False
        self._status = 0
        answer = self._answer = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await answer


class WebhookClient:
    """POSTs over kept-alive connections, at most ``max_idle`` idle ones kept per origin (a
    receiver such as uvicorn counts idle connections against its concurrency limit)."""

    def __init__(self, max_idle: int = 64) -> None:
        self.max_idle = max_idle
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self._targets: dict[str, tuple[str, int, bytes]] = {}

    @staticmethod
    def handles(url: str) -> bool:
        """Whether this client can send to ``url`` (plain ``http://``)."""
        return url.startswith("http://")

    def _target(self, url: str) -> tuple[str, int, bytes]:
        target = self._targets.get(url)
        if target is None:
            parts = urlsplit(url)
            if parts.scheme != "http" or not parts.hostname:
                raise WebhookClientError(f"not an http:// URL: {url}")
            path = parts.path or "/"
            if parts.query:
                path += "?" + parts.query
            host = parts.hostname
            port = parts.port or 80
            authority = parts.netloc.rpartition("@")[2]
            head = f"POST {path} HTTP/1.1\r\nHost: {authority}\r\n".encode("latin-1")
            target = self._targets[url] = (host, port, head)
        return target

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """POST ``body`` to ``url`` with ``headers``; returns the status (the body is dropped).

        Raises :class:`WebhookClientError` when the connection fails or the answer is not HTTP.
        The caller bounds the time (a cancelled request closes its connection).
        """
        host, port, head = self._target(url)
        lines = [head]
        for name, value in headers.items():
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        lines.append(b"Content-Length: %d\r\n\r\n" % len(body))
        lines.append(body)
        raw = b"".join(lines)
        key = (host, port)
        while True:
            conn = self._idle_connection(key)
            reused = conn is not None
            if conn is None:
                conn = await self._connect(host, port)
            self._busy.add(conn)
            try:
                status = await conn.request(raw)
            except WebhookClientError:
                conn.close()
                if reused and conn.answered_nothing:
                    continue  # closed by the server while idle: once more on a new connection
                raise
            except BaseException:
                conn.close()  # cancelled (timeout) mid-request: the connection's state is unknown
                raise
            finally:
                self._busy.discard(conn)
            self._release(key, conn)
            return status

    def _idle_connection(self, key: tuple[str, int]) -> _Connection | None:
        stack = self._idle.get(key)
        while stack:
            conn = stack.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def _release(self, key: tuple[str, int], conn: _Connection) -> None:
        if conn.closed:
            return
        stack = self._idle.setdefault(key, [])
        if len(stack) >= self.max_idle:
            conn.close()
        else:
            stack.append(conn)

    @staticmethod
    async def _connect(host: str, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(_Connection, host, port)
        except OSError as exc:
            raise WebhookClientError(f"{type(exc).__name__}: {exc}") from exc
        return conn

    async def aclose(self) -> None:
        """Close every connection, idle or busy."""
        for stack in self._idle.values():
            for conn in stack:
                conn.close()
        self._idle.clear()
        for conn in list(self._busy):
            conn.close()
        self._busy.clear()
