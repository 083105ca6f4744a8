"""Domain errors and their gRPC form (AIP-193: ``google.rpc.Status`` with ``ErrorInfo``).

Hierarchy::

    HubsyncError                     INTERNAL
    ├── InvalidArgument              INVALID_ARGUMENT   (+ BadRequest field violations)
    ├── NotFound                     NOT_FOUND
    ├── AlreadyExists                ALREADY_EXISTS
    ├── FailedPrecondition           FAILED_PRECONDITION
    ├── Aborted                      ABORTED            (a concurrent change came first)
    ├── Unauthenticated              UNAUTHENTICATED
    ├── PermissionDenied             PERMISSION_DENIED
    ├── ResourceExhausted            RESOURCE_EXHAUSTED (+ RetryInfo)
    └── Unavailable                  UNAVAILABLE        (+ RetryInfo)

Domain code raises these and knows nothing of gRPC; the error-mapping interceptor turns them
into statuses. Messages must never contain a secret.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "hubsync.dev"


class HubsyncError(Exception):
    """Base of every error hubsync reports to a caller."""

    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})
        self.retry_after = retry_after

    def details(self) -> list[any_pb2.Any]:
        """The status details: an ``ErrorInfo`` (reason, domain, metadata), plus subclasses' own."""
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=self.metadata)
        packed = [_pack(info)]
        if self.retry_after is not None:
            seconds = max(self.retry_after, 0.0)
            delay = duration_pb2.Duration(seconds=int(seconds), nanos=int((seconds % 1) * 1e9))
            packed.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
        return packed

    def to_status(self) -> grpc.Status:
        """The error as a rich gRPC status (``google.rpc.Status`` in the trailers)."""
        status = status_pb2.Status(
            code=getattr(code_pb2, self.code.name), message=self.message, details=self.details()
        )
        return rpc_status.to_status(status)


class InvalidArgument(HubsyncError):
    """The request is malformed; ``violations`` maps a field path to what is wrong with it."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(self, message: str, violations: Mapping[str, str] | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.violations = dict(violations or {})

    def details(self) -> list[any_pb2.Any]:
        """The base details plus a ``BadRequest`` with the field violations."""
        packed = super().details()
        if self.violations:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in self.violations.items()
                ]
            )
            packed.append(_pack(bad))
        return packed


class NotFound(HubsyncError):
    """NOT_FOUND: the thing asked for does not exist."""

    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(HubsyncError):
    """ALREADY_EXISTS: the thing to create exists."""

    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(HubsyncError):
    """FAILED_PRECONDITION: the system is not in a state where this can succeed."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class Aborted(HubsyncError):
    """A conditional change lost to a concurrent one (AIP-154): read again, then retry."""

    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"


class Unauthenticated(HubsyncError):
    """UNAUTHENTICATED: no valid credential (the caller's, or the portal's)."""

    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(HubsyncError):
    """PERMISSION_DENIED: the credential does not allow this."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class ResourceExhausted(HubsyncError):
    """RESOURCE_EXHAUSTED: a limit or quota is reached."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class Unavailable(HubsyncError):
    """UNAVAILABLE: a dependency is down; retrying later may succeed."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def _status_of(exc: grpc.aio.AioRpcError | grpc.RpcError) -> status_pb2.Status | None:
    """The ``google.rpc.Status`` a failed call carries in its trailers, if any."""
    raw = None
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            raw = value
    return None if raw is None else status_pb2.Status.FromString(raw)


def error_info(exc: grpc.aio.AioRpcError | grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """Returns the ErrorInfo detail of a failed call, if it carries one (for clients and tests)."""
    status = _status_of(exc)
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def retry_delay(exc: grpc.aio.AioRpcError | grpc.RpcError) -> float | None:
    """Returns the seconds a failed call's ``RetryInfo`` says to wait, if it carries one."""
    status = _status_of(exc)
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    return None
