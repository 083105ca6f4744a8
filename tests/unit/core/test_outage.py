"""Which errors count as a Redis outage, what a caller gets for one, and how loops log them."""

from __future__ import annotations

import logging

import pytest
from google.rpc import error_details_pb2
from redis import exceptions as rx

from hubsync.core.outage import OutageLog, loop_error, redis_outage, unavailable


@pytest.mark.parametrize(
    "exc",
    [
        rx.ConnectionError("Connection closed by server."),
        rx.TimeoutError("Timeout reading from socket"),
        rx.BusyLoadingError("Redis is loading the dataset in memory"),
        rx.ReadOnlyError("You can't write against a read only replica."),
        rx.MaxConnectionsError("Too many connections"),
        rx.MasterDownError("Link with MASTER is down"),
        rx.ResponseError("BUSY Redis is busy running a script."),
        # Redis Cluster: the cluster lost a master, a slot has no node for now, a reshard
        rx.ClusterDownError("The cluster is down"),
        rx.ResponseError("CLUSTERDOWN Hash slot not served"),
        rx.SlotNotCoveredError('Slot "42" is not covered by the cluster.'),
        rx.RedisClusterException("All slots are not covered after query all startup_nodes. 10922 of 16384"),
        rx.TryAgainError("TRYAGAIN Multiple keys request during rehashing of slot"),
    ],
)
def test_transient_errors_are_outages(exc: Exception) -> None:
    assert redis_outage(exc) is exc


def test_cluster_client_that_reaches_no_node_is_an_outage_unless_credentials_are_wrong() -> None:
    """The cluster client wraps what stopped every node from answering: an outage when that is a
    connection error, a configuration error (INTERNAL) when it is a refused password."""
    for cause, outage in (
        (rx.ConnectionError("Error 111"), True),
        (rx.AuthenticationError("WRONGPASS"), False),
    ):
        try:
            raise rx.RedisClusterException("Redis Cluster cannot be connected.") from cause
        except rx.RedisClusterException as exc:
            assert (redis_outage(exc) is cause) is outage
            assert (redis_outage(exc) is None) is not outage


def test_outage_found_behind_a_cause_or_in_a_group() -> None:
    cause = rx.ConnectionError("gone")
    try:
        raise RuntimeError("wrapped") from cause
    except RuntimeError as wrapped:
        assert redis_outage(wrapped) is cause
    assert redis_outage(ExceptionGroup("g", [cause, rx.TimeoutError("t")])) is cause
    # a group with anything else in it is not an outage: the other error must be seen
    assert redis_outage(ExceptionGroup("g", [cause, KeyError("bug")])) is None


@pytest.mark.parametrize(
    "exc",
    [
        rx.AuthenticationError("invalid password"),
        rx.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        rx.DataError("bad value"),
        # keys of several slots in one script or transaction: a bug, not an outage
        rx.ResponseError("CROSSSLOT Keys in request don't hash to the same slot"),
        rx.RedisClusterException("EVAL - all keys must map to the same key slot"),
        rx.CrossSlotTransactionError("All keys involved in a cluster transaction must map to the same slot"),
        KeyError("bug"),
    ],
)
def test_other_errors_are_not_outages(exc: Exception) -> None:
    assert redis_outage(exc) is None


def test_callers_get_unavailable_with_retry_info_and_no_error_text() -> None:
    err = unavailable(rx.ConnectionError("Error 111 connecting to 10.0.0.7:6379"))
    status = err.to_status()
    assert status.code.name == "UNAVAILABLE"
    assert "10.0.0.7" not in err.message
    kinds = {d.TypeName() for d in err.details()}
    assert {"google.rpc.ErrorInfo", "google.rpc.RetryInfo"} <= kinds
    info = error_details_pb2.ErrorInfo()
    err.details()[0].Unpack(info)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "REDIS_UNAVAILABLE",
        "hubsync.dev",
        {"error": "ConnectionError"},
    )


def test_outage_log_is_rate_limited_and_counts_what_it_left_out(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    report = OutageLog(logging.getLogger("t"), "loop: Redis unavailable", interval_s=30, clock=lambda: now[0])
    assert report(rx.ConnectionError("a"))
    for _ in range(5):
        now[0] += 1
        assert not report(rx.ConnectionError("b"))
    now[0] += 30
    assert report(rx.ConnectionError("c"))
    records = [r for r in caplog.records if r.name == "t"]
    assert [(r.levelno, r.__dict__["left_out"]) for r in records] == [
        (logging.WARNING, 0),
        (logging.WARNING, 5),
    ]
    assert all(r.exc_info is None for r in records)


def test_loop_error_warns_for_outages_and_keeps_stacks_for_bugs(caplog: pytest.LogCaptureFixture) -> None:
    report = loop_error(logging.getLogger("loop"), "consumer failed")
    report(rx.ConnectionError("down"))
    try:
        raise KeyError("bug")
    except KeyError as exc:
        report(exc)
    records = [r for r in caplog.records if r.name == "loop"]
    assert [r.levelno for r in records] == [logging.WARNING, logging.ERROR]
    assert records[0].exc_info is None and records[1].exc_info is not None
