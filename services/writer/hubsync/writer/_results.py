"""Outcome → proto conversion shared by the servicer and the gateway."""

from __future__ import annotations

from collections.abc import Sequence

from hubsync.api.common.v1 import common_pb2
from hubsync.api.writer.v1 import writer_pb2
from hubsync.writer.batches import Outcome
from hubsync.writer.dlq import HubSpotFailure

__all__ = [
    "outcome_from_pb",
    "result_list",
    "result_pb",
]


def result_pb(outcome: Outcome) -> writer_pb2.WriteResult:
    """Return the ``WriteResult`` of an outcome."""
    pb = writer_pb2.WriteResult(
        status=outcome.status,  # type: ignore[arg-type]
        hubspot_id=outcome.hubspot_id,
        created=outcome.created,
        dead_letter_id=outcome.dead_letter_id,
    )
    if outcome.error is not None:
        pb.error.CopyFrom(
            common_pb2.HubSpotError(
                http_status=outcome.error.http_status,
                category=outcome.error.category,
                message=outcome.error.message,
                correlation_id=outcome.error.correlation_id,
            )
        )
    return pb


def result_list(outcomes: Sequence[Outcome]) -> list[writer_pb2.WriteResult]:
    """Return the ``WriteResult`` of each outcome."""
    return [result_pb(o) for o in outcomes]


def outcome_from_pb(pb: writer_pb2.WriteResult) -> Outcome:
    """Return the inverse of :func:`result_pb` (an outcome kept in Redis between attempts)."""
    error = None
    if pb.HasField("error"):
        error = HubSpotFailure(
            pb.error.http_status, pb.error.message, pb.error.category, pb.error.correlation_id
        )
    return Outcome(pb.status, pb.hubspot_id, pb.created, error, pb.dead_letter_id)
