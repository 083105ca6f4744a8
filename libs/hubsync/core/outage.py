"""Redis outages: which errors mean "Redis cannot answer right now", and how they are reported.

A Redis restart, a failover or a full connection pool is not a bug in the call that met it: the
same call succeeds once Redis is back. So a gRPC call that fails on one answers ``UNAVAILABLE``
with ``RetryInfo`` (:func:`outage_status`, used by the error-mapping interceptor for unary and
server-streaming calls alike), logged at WARNING without a stack, and a
background loop that meets one logs a WARNING at most every :data:`OUTAGE_LOG_INTERVAL_S`
(:class:`OutageLog`) and carries on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
from redis import exceptions as rx

from hubsync.core.errors import Unavailable

log = logging.getLogger(__name__)

# Errors that go away by themselves: the server is unreachable, restarting, loading its data,
# a replica after a failover (READONLY), a cluster or master that is down, a busy script, a
# timeout, a connection pool that is full (MaxConnectionsError, also the cluster client's).
# Wrong credentials (AuthenticationError, also a ConnectionError) are a configuration error that
# retrying does not fix: they stay INTERNAL.
_TRANSIENT: tuple[type[BaseException], ...] = (
    rx.ConnectionError,
    rx.TimeoutError,
    rx.ReadOnlyError,
    rx.ClusterDownError,
    rx.TryAgainError,
)
_NOT_TRANSIENT: tuple[type[BaseException], ...] = (rx.AuthenticationError, rx.AuthorizationError)
# Reply prefixes of transient errors redis-py raises as a plain ResponseError.
_TRANSIENT_REPLIES = ("BUSY ", "LOADING ", "MASTERDOWN ", "TRYAGAIN ", "CLUSTERDOWN ")
# Redis Cluster: a slot no node serves for now (a node lost, slots being moved). The cluster
# client's "cannot be connected" (no node answered) carries the connection error as its cause;
# a script or transaction over keys of several slots (CROSSSLOT) is a bug and stays INTERNAL.
_TRANSIENT_CLUSTER: tuple[type[BaseException], ...] = (rx.SlotNotCoveredError,)
_TRANSIENT_CLUSTER_TEXT = ("All slots are not covered",)

# What a caller is told to wait before retrying.
RETRY_AFTER_S = 1.0
# A loop that meets an outage logs it at most this often (the count of the others with it).
OUTAGE_LOG_INTERVAL_S = 30.0
REASON = "REDIS_UNAVAILABLE"


def redis_outage(exc: BaseException) -> BaseException | None:
    """The transient Redis error behind ``exc`` (itself, its explicit cause, or, for an exception
    group, every one of its leaves), or None when ``exc`` is something else."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, BaseExceptionGroup):
            leaves = [redis_outage(e) for e in current.exceptions]
            return leaves[0] if leaves and all(leaves) else None
        if isinstance(current, _NOT_TRANSIENT):
            return None
        if isinstance(current, _TRANSIENT + _TRANSIENT_CLUSTER):
            return current
        if isinstance(current, rx.RedisClusterException) and str(current).startswith(_TRANSIENT_CLUSTER_TEXT):
            return current
        if isinstance(current, rx.ResponseError) and str(current).startswith(_TRANSIENT_REPLIES):
            return current
        current = current.__cause__
    return None


def unavailable(cause: BaseException) -> Unavailable:
    """The error a caller gets for a Redis outage: UNAVAILABLE, ErrorInfo REDIS_UNAVAILABLE
    (metadata ``error``: the exception's type, never its text) and RetryInfo."""
    return Unavailable(
        "Redis is unavailable; retry later",
        reason=REASON,
        metadata={"error": type(cause).__name__},
        retry_after=RETRY_AFTER_S,
    )


class OutageLog:
    """Rate-limited WARNING for a loop that keeps meeting the same outage.

    The first occurrence is logged at once; later ones at most every ``interval_s``, with how many
    were left out since. ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        logger: logging.Logger,
        message: str,
        *,
        interval_s: float = OUTAGE_LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        level: int = logging.WARNING,
    ) -> None:
        self._logger = logger
        self._message = message
        self._interval = interval_s
        self._clock = clock
        self._level = level
        self._next = float("-inf")
        self._left_out = 0

    def __call__(self, exc: BaseException, *, stack: bool = False, **extra: Any) -> bool:
        """Logs ``exc`` (type and a short text; its stack only with ``stack``) unless one was
        logged recently; returns whether it logged."""
        now = self._clock()
        if now < self._next:
            self._left_out += 1
            return False
        fields = {"error": f"{type(exc).__name__}: {str(exc)[:200]}", "left_out": self._left_out, **extra}
        self._logger.log(self._level, self._message, extra=fields, exc_info=exc if stack else None)
        self._next = now + self._interval
        self._left_out = 0
        return True


def loop_error(
    logger: logging.Logger, message: str, outage_message: str = ""
) -> Callable[[BaseException], None]:
    """For a background loop's ``except Exception``: a Redis outage is a rate-limited WARNING
    (``outage_message``, see :class:`OutageLog`), anything else ``message`` at ERROR with its stack
    (also rate-limited, so a bug met on every iteration does not flood the log)."""
    outage = OutageLog(logger, outage_message or f"{message}: Redis unavailable, retrying")
    other = OutageLog(logger, message, level=logging.ERROR)

    def report(exc: BaseException) -> None:
        if redis_outage(exc) is not None:
            outage(exc)
        else:
            other(exc, stack=True)

    return report


_call_logs: dict[str, OutageLog] = {}


def outage_status(exc: BaseException, method: str) -> grpc.Status | None:
    """For the error-mapping interceptor: the status a call that failed with ``exc`` answers when
    ``exc`` is a Redis outage (UNAVAILABLE + RetryInfo, a WARNING without a stack, at most every
    5 s per method), else None (a bug: INTERNAL, logged with its stack)."""
    cause = redis_outage(exc)
    if cause is None:
        return None
    if method not in _call_logs:
        _call_logs[method] = OutageLog(log, "call failed: Redis unavailable", interval_s=5.0)
    _call_logs[method](cause, method=method)
    return unavailable(cause).to_status()


def reraise_if_cancelling() -> None:
    """Raise ``CancelledError`` if the current task is being cancelled: a cancellation that
    surfaced as another error (a gRPC call reports CANCELLED; a client library swallowed it) must
    stop the task, not be retried."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
