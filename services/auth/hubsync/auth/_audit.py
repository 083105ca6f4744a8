"""The audit trail: one ``hubsync.auth.audit`` log record per credential event (never a secret)."""

from __future__ import annotations

import logging

from hubsync.core.callers import current_caller
from hubsync.core.telemetry import trace_id_hex

_audit_log = logging.getLogger("hubsync.auth.audit")


def audit(event: str, portal_id: int, **details: object) -> None:
    """Log ``event`` for ``portal_id`` (0: no portal) with the caller and the trace."""
    _audit_log.info(
        "auth audit: %s",
        event,
        extra={
            "audit_event": event,
            "portal_id": portal_id,
            "caller": current_caller.get() or "system",
            "trace_id": trace_id_hex(),
            **details,
        },
    )
