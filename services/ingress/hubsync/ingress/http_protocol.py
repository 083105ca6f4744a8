"""uvicorn's httptools protocol with the limits a public edge needs and uvicorn lacks.

uvicorn has no deadline for reading a request (a client that trickles its headers or its body
holds the connection, and the body buffered so far, forever) and no header size limit with
httptools. :class:`EdgeProtocol` adds:

- a header deadline: from the connection's start (or a request's first byte, on a kept-alive
  connection) to the end of its headers; a client that misses it gets 408 and is disconnected;
- a body deadline: from the end of the headers to the end of the body; a request that misses it
  gets 408 (unless it was answered already) and is disconnected, and its handler sees
  ``http.disconnect``;
- a header size limit: request line and headers together; a larger block gets 431.

Deadlines are timers armed only while a request is incomplete after a read, so a request that
arrives whole in one read (HubSpot's, behind a buffering proxy) costs no timer at all.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["EdgeLimits", "EdgeProtocol", "edge_protocol"]

log = logging.getLogger(__name__)

_IDLE, _HEADERS, _BODY = 0, 1, 2


@dataclass(frozen=True)
class EdgeLimits:
    """How long reading a request may take, and how large its header block may be."""

    header_timeout_s: float
    body_timeout_s: float
    max_header_bytes: int


def _response(status: int, reason: str) -> bytes:
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(reason)}\r\nconnection: close\r\n\r\n{reason}"
    ).encode("ascii")


_HEADER_TIMEOUT = _response(408, "Request Timeout")
_HEADERS_TOO_LARGE = _response(431, "Request Header Fields Too Large")


class _HeadersTooLarge(Exception):
    pass


class EdgeProtocol(HttpToolsProtocol):
    """One connection of the edge; subclasses made by :func:`edge_protocol` carry the limits."""

    limits: ClassVar[EdgeLimits]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the connection's header deadline."""
        super().connection_made(transport)
        self._phase = _IDLE
        self._header_bytes = 0
        # Whether this read's header bytes are counted whole (then not again by the callbacks).
        self._counted_raw = False
        self._too_large = False
        self._deadline: asyncio.TimerHandle | None = None
        # The first request's headers are due within the header timeout of connecting.
        self._arm(self.limits.header_timeout_s, self._headers_late)

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop the deadline with the connection."""
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed the parser; refuse headers past the size limit, arm the header or body deadline."""
        # A read that continues a header block is counted whole: the parser buffers an
        # unfinished header without telling us. In a read that starts a request the callbacks
        # below count each finished part instead.
        self._counted_raw = self._phase == _HEADERS
        if self._counted_raw:
            self._header_bytes += len(data)
        super().data_received(data)
        if self.transport.is_closing():
            return
        phase = self._phase
        if phase == _HEADERS:
            if self._header_bytes > self.limits.max_header_bytes:
                self._refuse_headers()
            elif self._deadline is None:
                self._arm(self.limits.header_timeout_s, self._headers_late)
        elif phase == _BODY and self._deadline is None:
            self._arm(self.limits.body_timeout_s, self._body_late)

    # Parser callbacks (httptools calls them during ``feed_data``).

    def on_message_begin(self) -> None:
        """Start counting a request's header bytes."""
        super().on_message_begin()
        self._phase = _HEADERS
        self._header_bytes = 0
        self._counted_raw = False

    def on_url(self, url: bytes) -> None:
        """Count the request line."""
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Count one header."""
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """End the header deadline; the body deadline starts with the next read."""
        self._phase = _BODY
        self._disarm()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        """End the body deadline."""
        self._phase = _IDLE
        self._disarm()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        """Answer a parser error: 431 when the headers were too large, else uvicorn's 400."""
        # A callback's exception reaches uvicorn as a parser error, answered 400: say 431 instead.
        if self._too_large:
            self._refuse_headers()
        else:
            super().send_400_response(msg)

    # Limits.

    def _count(self, size: int) -> None:
        if self._counted_raw:
            return
        self._header_bytes += size
        if self._header_bytes > self.limits.max_header_bytes:
            self._too_large = True
            raise _HeadersTooLarge

    def _refuse_headers(self) -> None:
        log.info("request headers over %d bytes: answered 431", self.limits.max_header_bytes)
        self._close_with(_HEADERS_TOO_LARGE)

    def _arm(self, delay: float, callback: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or self._phase == _BODY:
            return
        if self._phase == _HEADERS:
            log.info("request headers not received within %ss: disconnected", self.limits.header_timeout_s)
            self._close_with(_HEADER_TIMEOUT)
        else:
            self.transport.close()  # connected and said nothing

    def _body_late(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or self._phase != _BODY:
            return
        log.info("request body not received within %ss: disconnected", self.limits.body_timeout_s)
        cycle = self.cycle
        answer = b""
        if cycle is not None and not cycle.response_started:
            answer = _HEADER_TIMEOUT
        if cycle is not None:
            # The handler's receive() returns http.disconnect now; whatever it sends is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        self._close_with(answer)

    def _close_with(self, response: bytes) -> None:
        self._disarm()
        if response:
            self.transport.write(response)
        self.transport.close()


def edge_protocol(limits: EdgeLimits) -> type[EdgeProtocol]:
    """Return an :class:`EdgeProtocol` class bound to ``limits`` (uvicorn builds one per connection)."""
    return type("BoundEdgeProtocol", (EdgeProtocol,), {"limits": limits})
