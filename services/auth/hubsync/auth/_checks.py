"""Checks shared by the vault's parts: portal ids, connection states, OAuth failures as errors."""

from __future__ import annotations

from hubsync.auth.oauth_client import InvalidGrant, OAuthUnavailable
from hubsync.auth.store import STATE_NEEDS_REAUTH, STATE_REVOKED
from hubsync.core.errors import FailedPrecondition, HubsyncError, InvalidArgument, Unavailable

REAUTH_REASON = "CONNECTION_NEEDS_REAUTH"
MAX_TOKEN_LENGTH = 1024


def oauth_failure(exc: Exception) -> HubsyncError:
    """Return the error a caller sees for a failure at HubSpot's OAuth endpoints."""
    if isinstance(exc, OAuthUnavailable):
        return Unavailable(str(exc), retry_after=exc.retry_after or 1.0)
    if isinstance(exc, InvalidGrant):
        return FailedPrecondition(str(exc), reason=REAUTH_REASON)
    return FailedPrecondition(str(exc), reason="OAUTH_CLIENT_REJECTED")


def check_state(portal_id: int, state: str) -> None:
    """Refuses a connection that needs a person or was revoked."""
    if state == STATE_NEEDS_REAUTH:
        raise FailedPrecondition(
            f"portal {portal_id} must be authorized again",
            reason=REAUTH_REASON,
            metadata={"portal_id": str(portal_id)},
        )
    if state == STATE_REVOKED:
        raise FailedPrecondition(
            f"portal {portal_id}'s connection was revoked",
            reason="CONNECTION_REVOKED",
            metadata={"portal_id": str(portal_id)},
        )


def check_portal(portal_id: int) -> None:
    """Refuses a portal id HubSpot cannot have issued."""
    if portal_id <= 0:
        raise InvalidArgument("portal_id must be a positive HubSpot account id", {"portal_id": "must be > 0"})
