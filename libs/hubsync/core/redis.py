"""The async Redis client every service uses, built from :class:`CoreSettings`."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import hiredis
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.client import Pipeline, PubSub
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel
from redis.backoff import FullJitterBackoff, NoBackoff
from redis.exceptions import AskError, AuthenticationError, MovedError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Defined in hubsync.core.keys (the Redis contract); re-exported for existing imports.
from hubsync.core.keys import CONNECTION_CHANGES_CHANNEL as CONNECTION_CHANGES_CHANNEL
from hubsync.core.keys import portal_key as portal_key
from hubsync.core.keys import written_key as written_key
from hubsync.core.outage import reraise_if_cancelling as _reraise_if_cancelling
from hubsync.core.settings import CLUSTER_SCHEMES, CoreSettings, cluster_seeds, is_cluster_url
from hubsync.core.tls import redis_tls_options

log = logging.getLogger(__name__)

# Connections per client; past it a command waits up to POOL_TIMEOUT_S for one to come back.
POOL_MAX_CONNECTIONS = 100
POOL_TIMEOUT_S = 10.0

# A command that meets a dropped connection (Redis restarted, failed over, or closed an idle
# one) is sent again on a new connection, up to this many times, after a jittered wait of up to
# 0.1, 0.2, 0.4 s (about 0.35 s in all while Redis stays down). Only connection errors: a timeout
# may mean Redis ran the command, and it already cost SOCKET_TIMEOUT_S.
CONNECTION_RETRIES = 3
# A pooled connection idle this long is PINGed before it carries a command.
HEALTH_CHECK_INTERVAL_S = 10
SOCKET_TIMEOUT_S = 5.0
SOCKET_CONNECT_TIMEOUT_S = 2.0
# TCP keepalive: a peer that vanished without closing (a node lost, a partition) is noticed on an
# idle connection after about 15 + 3 x 5 s instead of the kernel's two hours.
_KEEPALIVE = {"TCP_KEEPIDLE": 15, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 3}


def _keepalive_options() -> dict[int, int]:
    return {getattr(socket, name): value for name, value in _KEEPALIVE.items() if hasattr(socket, name)}


def _maint_notifications_off() -> dict[str, Any]:
    """redis-py >= 7 skips its check of a pooled connection (closed by the server?) before handing
    it out while "maintenance notifications" (Redis Enterprise) are on, and "auto" counts as on:
    every connection a Redis restart closed then fails its next command. hubsync runs on open-source
    Redis and Sentinel, so they are turned off where the option exists."""
    try:
        from redis.maint_notifications import MaintNotificationsConfig
    except ImportError:  # redis-py < 7: no such option, the check always runs
        return {}
    return {"maint_notifications_config": MaintNotificationsConfig(enabled=False)}


def connection_options() -> dict[str, Any]:
    """Connection-pool options every client gets (also the Sentinel path): how a pool recovers
    after Redis restarts (retry on connection errors, health checks, keepalive)."""
    return {
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
        "socket_connect_timeout": SOCKET_CONNECT_TIMEOUT_S,
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_keepalive": True,
        "socket_keepalive_options": _keepalive_options(),
        "retry": Retry(
            FullJitterBackoff(cap=0.5, base=0.05),
            CONNECTION_RETRIES,
            supported_errors=(RedisConnectionError,),
        ),
        "retry_on_error": [RedisConnectionError],
        **_maint_notifications_off(),
    }


class _CPacking(AbstractConnection):
    """A connection whose commands are packed into RESP by hiredis (C), as redis-py's own
    synchronous client does when hiredis is installed; its asyncio connections pack in Python,
    argument by argument (mapper spent ~13 % of its CPU there under the fairness benchmark: the
    publish script's and the feed marks' long argument lists). The wire bytes are the same
    (tests/unit/core/test_redis_packing.py); anything hiredis does not take (a ``bytearray``, an
    unsupported type: redis-py raises its ``DataError``) and encodings other than strict UTF-8 go
    to redis-py's packer."""

    def pack_command(self, *args: Any) -> list[bytes]:
        encoder = self.encoder
        command = args[0] if args else None
        if (
            isinstance(command, str)
            and " " not in command
            and encoder.encoding in ("utf-8", "utf8")
            and encoder.encoding_errors == "strict"
        ):
            try:
                return [hiredis.pack_command(args)]
            except TypeError:
                pass
        return super().pack_command(*args)


_c_packing: dict[type, Any] = {}


def c_packing(connection_class: Any) -> Any:
    """``connection_class`` (a redis-py asyncio connection class) packing its commands with
    hiredis (:class:`_CPacking`); one subclass per class."""
    if issubclass(connection_class, _CPacking):
        return connection_class
    made = _c_packing.get(connection_class)
    if made is None:
        made = _c_packing[connection_class] = type(
            connection_class.__name__, (_CPacking, connection_class), {"__module__": __name__}
        )
    return made


def create_redis(settings: CoreSettings, *, decode_responses: bool = False) -> Redis:
    """Returns a client for ``settings.redis_url`` (password from ``HUBSYNC_REDIS_PASSWORD``), or,
    with ``HUBSYNC_REDIS_SENTINELS``, for the master the sentinels name (re-asked after a failover;
    the sentinels themselves are reached with :func:`sentinel_connection_options`), or, for a
    ``redis+cluster://`` URL, a Redis Cluster client (:func:`create_cluster_client`).
    """
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    options: dict[str, Any] = {
        "password": password,
        "decode_responses": decode_responses,
        **connection_options(),
        **redis_tls_options(settings),
    }
    if is_cluster_url(settings.redis_url):
        return create_cluster_client(settings.redis_url, **options)
    sentinels = settings.sentinel_addresses()
    if sentinels:
        db = int(urlsplit(settings.redis_url).path.lstrip("/") or 0)
        sentinel = _Sentinel(sentinels, settings)
        if "ssl_cert_reqs" in options:
            options["ssl"] = True
        master: Redis = sentinel.master_for(
            settings.redis_sentinel_master, redis_class=Redis, db=db, **options
        )
        master.connection_pool.connection_class = c_packing(master.connection_pool.connection_class)
        return master
    # A full pool makes a command wait for a connection (up to POOL_TIMEOUT_S) instead of failing
    # with MaxConnectionsError under a burst of concurrent work.
    pool = BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=POOL_MAX_CONNECTIONS, timeout=POOL_TIMEOUT_S, **options
    )
    pool.connection_class = c_packing(pool.connection_class)
    return Redis.from_pool(pool)  # the client owns the pool: closing it closes the pool


# ---- Sentinel ------------------------------------------------------------------------------------

# A sentinel only says where the master is: a short wait, so one that is down costs little before
# the next is asked.
SENTINEL_TIMEOUT_S = 2.0


def sentinel_connection_options(settings: CoreSettings) -> dict[str, Any]:
    """redis-py options for the connections to the sentinels themselves (the master's are
    :func:`create_redis`'s): TLS with the master's CA and client certificate when
    ``HUBSYNC_REDIS_URL`` is ``rediss://``, and ``HUBSYNC_REDIS_SENTINEL_PASSWORD`` (the sentinels'
    ``requirepass``; never ``HUBSYNC_REDIS_PASSWORD``, which is the master's)."""
    options: dict[str, Any] = {
        "socket_connect_timeout": SENTINEL_TIMEOUT_S,
        "socket_timeout": SENTINEL_TIMEOUT_S,
        # One immediate retry (a pooled connection the sentinel closed), not redis-py's default
        # of three with waits of seconds: a failed sentinel is skipped for the next one, and the
        # master's connection retries the whole discovery (connection_options).
        "retry": Retry(NoBackoff(), 1),
        **_maint_notifications_off(),
    }
    tls = redis_tls_options(settings)
    if tls:
        options.update(tls, ssl=True)
    if settings.redis_sentinel_password is not None:
        options["password"] = settings.redis_sentinel_password.get_secret_value()
    return options


class _Sentinel(Sentinel):
    """redis-py's Sentinel with :func:`sentinel_connection_options` for every sentinel, whose
    failed discovery says, per sentinel, why it gave no master (by address, and naming
    ``HUBSYNC_REDIS_SENTINEL_PASSWORD`` when a sentinel refused the credentials)."""

    def __init__(self, sentinels: Sequence[tuple[str, int]], settings: CoreSettings) -> None:
        super().__init__(sentinels, sentinel_kwargs=sentinel_connection_options(settings))  # type: ignore[no-untyped-call]
        self._password_hint = (
            "check HUBSYNC_REDIS_SENTINEL_PASSWORD, the sentinels' requirepass"
            if settings.redis_sentinel_password is not None
            else "HUBSYNC_REDIS_SENTINEL_PASSWORD (the sentinels' requirepass) is not set"
        )

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        """The master's address from the first sentinel that knows a healthy one (which is then
        asked first next time); :class:`MasterNotFoundError` lists what each sentinel answered."""
        problems: list[str] = []
        for index, sentinel in enumerate(self.sentinels):
            kwargs = sentinel.connection_pool.connection_kwargs
            where = f"sentinel {kwargs.get('host')}:{kwargs.get('port')}"
            try:
                masters = cast(dict[str, Any], await sentinel.sentinel_masters())
            except AuthenticationError as exc:
                problems.append(f"{where}: {exc} ({self._password_hint})")
                continue
            except (RedisConnectionError, RedisTimeoutError) as exc:
                problems.append(f"{where}: {exc}")
                continue
            state = masters.get(service_name)
            if state and self.check_master_state(state, service_name):
                self.sentinels[0], self.sentinels[index] = sentinel, self.sentinels[0]
                return state["ip"], state["port"]
            problems.append(f"{where}: no master {service_name!r} that is up")
        raise MasterNotFoundError(f"no master found for {service_name!r}: " + "; ".join(problems))


# ---- Redis Cluster --------------------------------------------------------------------------------


def create_cluster_client(url: str, **options: Any) -> Redis:
    """A Redis Cluster client for a ``redis+cluster://`` URL, with the pool-recovery options of
    :func:`connection_options` (``options``; a password in ``options`` wins over one in the URL).

    Typed as :class:`Redis`: :class:`RedisCluster` offers the same commands, scripts and
    pipelines (``transaction=True`` and ``WATCH`` on keys of one slot, run on that slot's node:
    :class:`_NodeTransaction`), which is all hubsync uses; a script or transaction whose keys span
    slots fails (``CROSSSLOT``) instead of running. Pub/sub goes through :func:`subscription`.
    """
    parts = urlsplit(url)
    user, _, secret = parts.netloc.rpartition("@")[0].partition(":")
    options = dict(options)
    if not options.get("password") and secret:
        options["password"] = unquote(secret)
    if user:
        options["username"] = unquote(user)
    if CLUSTER_SCHEMES[parts.scheme]:
        options["ssl"] = True
    client = _WaitingRedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in cluster_seeds(url)],
        max_connections=POOL_MAX_CONNECTIONS + _CLUSTER_SPARE_CONNECTIONS,
        **options,
    )
    return cast(Redis, client)


# Connections per node beyond the permits below (slack; pub/sub and transactions have their own
# connections: subscription, _NodeTransaction).
_CLUSTER_SPARE_CONNECTIONS = 20
# Set while a task holds a permit, so a command a pipeline re-sends itself (after MOVED/ASK)
# does not wait for a second one.
_holding_permit: ContextVar[bool] = ContextVar("hubsync_redis_permit", default=False)


class _WaitingRedisCluster(RedisCluster):
    """A cluster client whose commands wait for a connection when the pool is busy, as the
    single-server client's blocking pool does (redis-py's cluster nodes raise
    MaxConnectionsError instead). At most ``POOL_MAX_CONNECTIONS`` commands and pipelines run at
    once; each uses at most one connection per node, so no node's pool runs dry."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Every node's connections pack with hiredis (_CPacking): the nodes known now, and those
        # learnt later (made from connection_kwargs, the dict the nodes manager holds too).
        packing = c_packing(self.connection_kwargs["connection_class"])
        self.connection_kwargs["connection_class"] = packing
        for node in self.nodes_manager.startup_nodes.values():
            node.connection_class = packing
        self._permits = asyncio.Semaphore(POOL_MAX_CONNECTIONS)
        self._node_clients: dict[str, Redis] = {}

    async def with_permit(self, call: Callable[[], Awaitable[Any]]) -> Any:
        if _holding_permit.get():
            return await call()
        if self._initialize:
            # Learn the slot map before routing: redis-py routes a command that arrives before it
            # knows the map to a random node, and the MOVED replies that follow make it close
            # every connection, cutting the commands in flight (seen with concurrent BLPOPs).
            await self.initialize()
        async with self._permits:
            token = _holding_permit.set(True)
            try:
                return await call()
            finally:
                _holding_permit.reset(token)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        run = super().execute_command
        return await self.with_permit(lambda: run(*args, **kwargs))

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> Any:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # raises as redis-py does
        if transaction:
            return _NodeTransaction(self)
        return _WaitingPipeline(self, transaction)  # type: ignore[abstract]  # as redis-py builds it

    def node_client(self, node: ClusterNode) -> Redis:
        """A plain client of ``node`` (its own blocking pool, the cluster client's connection
        settings: TLS, credentials, timeouts), made once per node."""
        client = self._node_clients.get(node.name)
        if client is None:
            pool = BlockingConnectionPool(
                connection_class=node.connection_class,
                max_connections=POOL_MAX_CONNECTIONS,
                timeout=POOL_TIMEOUT_S,
                **node.connection_kwargs,
            )
            client = self._node_clients[node.name] = Redis.from_pool(pool)
        return client

    async def aclose(self) -> None:
        """Closes the cluster's connections and the node clients' ones."""
        clients, self._node_clients = list(self._node_clients.values()), {}
        for client in clients:
            with contextlib.suppress(Exception):
                await client.aclose()
        await super().aclose()


class _WaitingPipeline(ClusterPipeline):
    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        client = self.cluster_client
        assert isinstance(client, _WaitingRedisCluster)
        run = super().execute
        result: list[Any] = await client.with_permit(lambda: run(raise_on_error, allow_redirections))
        return result


# ---- Pub/sub -------------------------------------------------------------------------------------

# After a lost subscription, wait this long before subscribing again (a restarting Redis, a node
# being replaced): whoever follows a channel also polls, so the gap costs latency, not data.
RESUBSCRIBE_S = 1.0
# How long one wait for a message lasts (then the loop checks the connection's health again).
_MESSAGE_WAIT_S = 1.0
# Which cluster node the next subscription goes to (they take turns, so a failed node is left).
_next_node = itertools.count()


@contextlib.asynccontextmanager
async def subscription(redis: Redis, channel: str) -> AsyncIterator[PubSub]:
    """A :class:`PubSub` subscribed to ``channel``, closed on exit.

    On a single Redis or Sentinel it is the client's own. On Redis Cluster a PUBLISH reaches
    every node, so it holds a plain connection to one node of the cluster, with the cluster
    client's TLS, credentials and timeouts (redis-py's asyncio cluster client has no pub/sub
    before 8.x, and its 8.x one picks a node by the channel's slot and needs the slot map
    loaded first). Each call takes the next node of the cluster's current topology, so a
    subscriber whose node failed moves on to another one when it subscribes again.
    """
    if isinstance(redis, RedisCluster):
        pubsub, pool = await _node_pubsub(redis)
    else:
        pubsub, pool = redis.pubsub(), None
    try:
        await pubsub.subscribe(channel)
        yield pubsub
    finally:
        with contextlib.suppress(Exception):
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        if pool is not None:
            with contextlib.suppress(Exception):
                await pool.disconnect()


async def _node_pubsub(cluster: RedisCluster) -> tuple[PubSub, ConnectionPool]:
    if cluster._initialize:  # the topology is learnt at the first command
        await cluster.initialize()
    nodes = {
        node.name: node for node in [*cluster.get_nodes(), *cluster.nodes_manager.startup_nodes.values()]
    }
    ordered = sorted(nodes.values(), key=lambda node: node.name)
    node = ordered[next(_next_node) % len(ordered)]
    pool = ConnectionPool(connection_class=node.connection_class, **node.connection_kwargs)
    return PubSub(connection_pool=pool), pool


async def follow_channel(
    redis: Redis,
    channel: str,
    on_message: Callable[[str], None],
    *,
    what: str,
    on_subscribed: Callable[[], None] | None = None,
    on_lost: Callable[[], None] | None = None,
) -> None:
    """Calls ``on_message`` with each message published on ``channel`` (as text) until cancelled.

    A lost subscription (Redis restarted, the cluster node failed) is logged as ``what`` and
    taken up again :data:`RESUBSCRIBE_S` later, on another node of a cluster; messages published
    in between are lost, so every follower also polls. ``on_subscribed`` runs each time the
    subscription is up, ``on_lost`` each time it ends.
    """
    while True:
        try:
            async with subscription(redis, channel) as pubsub:
                if on_subscribed is not None:
                    on_subscribed()
                try:
                    while True:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=_MESSAGE_WAIT_S
                        )
                        _reraise_if_cancelling()  # a client library may lose a cancellation
                        if message is not None:
                            on_message(as_str(message.get("data")))
                finally:
                    if on_lost is not None:
                        on_lost()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _reraise_if_cancelling()
            log.warning("%s subscription lost", what, extra={"channel": channel, "error": str(exc)[:200]})
            await asyncio.sleep(RESUBSCRIBE_S)


class _NodeTransaction(Pipeline):
    """A ``transaction=True`` pipeline (MULTI/EXEC, with or without WATCH) on a cluster, run as
    on a single Redis on the node serving its keys' slot (found from its first command), through
    :meth:`_WaitingRedisCluster.node_client`.

    redis-py's cluster transaction runs every command sent while WATCHing (the WATCH, the reads
    before MULTI, the UNWATCH) in a new thread with its own event loop, blocking the caller's loop
    until it returns: 4.3x the client CPU of a single Redis per command (bench/redis_client).
    Keys of several slots are refused by Redis (CROSSSLOT), as before. A redirection (the slot
    moved) updates the cluster client's slot map and is raised: the caller's retry goes to the
    new node.
    """

    def __init__(self, cluster: _WaitingRedisCluster) -> None:
        # The pool and the reply callbacks are the node's, set by _route before the first use.
        super().__init__(None, {}, True, None)  # type: ignore[arg-type]
        self._cluster = cluster
        self._routed = False

    async def _route(self, args: tuple[Any, ...]) -> None:
        if self._routed:
            return
        if self._cluster._initialize:
            await self._cluster.initialize()
        # redis-py's own key parsing (EVAL/EVALSHA key counts, key positions per command).
        slot = await self._cluster._determine_slot(*args)
        client = self._cluster.node_client(self._cluster.nodes_manager.get_node_from_slot(slot))
        self.connection_pool = client.connection_pool
        self.response_callbacks = client.response_callbacks
        self._routed = True

    async def immediate_execute_command(self, *args: Any, **options: Any) -> Any:
        """A command sent at once (WATCH and what is read before MULTI), on the keys' node."""
        await self._route(args)
        try:
            return await super().immediate_execute_command(*args, **options)  # type: ignore[no-untyped-call]
        except (MovedError, AskError) as exc:
            await self._redirected(exc)
            raise

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Sends MULTI, the queued commands and EXEC to the node of the first command's keys."""
        if self.command_stack:
            await self._route(self.command_stack[0][0])
        try:
            result: list[Any] = await super().execute(raise_on_error)
        except (MovedError, AskError) as exc:
            await self._redirected(exc)
            raise
        return result

    async def reset(self) -> None:  # type: ignore[override]
        """Releases the connection; the next use is routed again."""
        try:
            await super().reset()  # type: ignore[no-untyped-call]
        finally:
            self._routed = False

    async def _redirected(self, exc: MovedError | AskError) -> None:
        if isinstance(exc, MovedError):
            with contextlib.suppress(Exception):
                moved = self._cluster.nodes_manager.move_slot(exc)
                if inspect.isawaitable(moved):  # async in redis-py 8, plain before
                    await moved


# Beyond this many undelivered entries, Redis < 7 lag is reported as this number (a floor).
LAG_COUNT_CAP = 10_000
# Counts the entries after an id inside Redis: only a number crosses the network.
_COUNT_AFTER_LUA = "return #redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])"


async def group_lag(redis: Redis, key: str, group: dict[Any, Any]) -> int:
    """Entries of stream ``key`` that consumer group ``group`` (an ``XINFO GROUPS`` row) has not
    been delivered yet. Redis 7 reports it (``lag``); on Redis 6.2 it is counted from the group's
    last-delivered id, up to :data:`LAG_COUNT_CAP`."""
    lag = group.get("lag", group.get(b"lag"))
    if lag is not None:
        return int(lag)
    last = group.get("last-delivered-id", group.get(b"last-delivered-id", b"0-0"))
    last_id = last.decode() if isinstance(last, bytes) else str(last)
    count = await redis.eval(_COUNT_AFTER_LUA, 1, key, f"({last_id}", LAG_COUNT_CAP)
    return int(count)


async def pipelined(redis: Any, commands: Sequence[Sequence[Any]], scripts: Sequence[str] = ()) -> list[Any]:
    """Sends ``commands`` in one pipeline (no transaction) and returns their replies.

    A script not loaded (Redis restarted or flushed its scripts) raises ``NoScriptError``, unless
    ``scripts`` names the Lua the commands' ``EVALSHA`` run: then those are loaded and the
    pipeline is sent once more.
    """
    try:
        return await _pipelined(redis, commands)
    except NoScriptError:
        if not scripts:
            raise
    for script in scripts:
        await redis.script_load(script)
    return await _pipelined(redis, commands)


async def _pipelined(redis: Any, commands: Sequence[Sequence[Any]]) -> list[Any]:
    pipe = redis.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    try:
        replies: list[Any] = await pipe.execute()
    except ResponseError as exc:
        if "NOSCRIPT" in str(exc):
            raise NoScriptError(str(exc)) from None
        raise
    return replies


def as_str(value: bytes | str | None) -> str:
    """A Redis reply field as text: bytes decoded as UTF-8 (bad bytes replaced), ``None`` as ""."""
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def redis_from_url(url: str, **options: Any) -> Redis:
    """A plain client for ``url`` (no pool-recovery options): a Redis Cluster client for a
    ``redis+cluster://`` URL, else :meth:`Redis.from_url`. For tools and tests; services use
    :func:`create_redis`."""
    if is_cluster_url(url):
        return create_cluster_client(url, **options)
    return Redis.from_url(url, **options)
