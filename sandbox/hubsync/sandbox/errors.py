"""HubSpot's error bodies.

ApiError
  raised anywhere below a route; the route wrapper turns it into a JSON response with
  HubSpot's shape: ``{"status":"error","message":…,"correlationId":…,"category":…}``.
"""

from __future__ import annotations

import uuid
from typing import Any


def correlation_id() -> str:
    return str(uuid.uuid4())


class ApiError(Exception):
    """An error answer: ``status`` is the HTTP status, ``body`` the JSON body."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None):
        super().__init__(body.get("message", ""))
        self.status = status
        self.body = body
        self.headers = headers or {}


def error_body(
    message: str,
    category: str,
    errors: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "status": "error",
        "message": message,
        "correlationId": correlation_id(),
        "category": category,
    }
    if errors is not None:
        body["errors"] = errors
    body.update(extra)
    return body


def validation_error(message: str, errors: list[dict[str, Any]] | None = None) -> ApiError:
    return ApiError(400, error_body(message, "VALIDATION_ERROR", errors))


def not_found(message: str = "resource not found") -> ApiError:
    return ApiError(404, error_body(message, "OBJECT_NOT_FOUND"))


def conflict(message: str) -> ApiError:
    return ApiError(409, error_body(message, "CONFLICT"))


AUTH_MISSING_MESSAGE = (
    "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find "
    "more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview"
)


def unauthorized() -> ApiError:
    return ApiError(401, error_body(AUTH_MISSING_MESSAGE, "INVALID_AUTHENTICATION"))


def expired(minutes_ago: int) -> ApiError:
    return ApiError(
        401,
        error_body(
            f"The OAuth token used to make this call expired {minutes_ago} minute(s) ago.",
            "EXPIRED_AUTHENTICATION",
        ),
    )


def missing_scopes(required: list[str]) -> ApiError:
    return ApiError(
        403,
        error_body(
            "This app hasn't been granted all required scopes to make this call. Read more about "
            "required scopes here: https://developers.hubspot.com/scopes.",
            "MISSING_SCOPES",
            errors=[
                {
                    "message": "One or more of the following scopes are required.",
                    "context": {"requiredGranularScopes": required},
                }
            ],
            links={"scopes": "https://developers.hubspot.com/scopes"},
        ),
    )


RATE_LIMIT_MESSAGES = {
    "TEN_SECONDLY_ROLLING": "You have reached your ten_secondly_rolling limit.",
    "DAILY": "You have reached your daily limit.",
    # UNSURE: the policy name of the search limit is not documented; the message is.
    "SECONDLY": "You have reached your secondly limit.",
}


def rate_limited(policy: str, headers: dict[str, str] | None = None) -> ApiError:
    body = {
        "status": "error",
        "message": RATE_LIMIT_MESSAGES[policy],
        "errorType": "RATE_LIMIT",
        "correlationId": correlation_id(),
        "policyName": policy,
        "requestId": str(uuid.uuid4()),
    }
    return ApiError(429, body, headers)


FAULT_MESSAGES = {
    423: ("The resource is locked. Please retry in a couple of seconds.", "LOCKED"),
    477: ("This portal is being migrated. Please retry later.", "MIGRATION_IN_PROGRESS"),
    500: ("internal error", "INTERNAL_ERROR"),
    502: ("Bad Gateway", "BAD_GATEWAY"),
    503: ("Service Unavailable", "SERVICE_UNAVAILABLE"),
    504: ("Gateway Timeout", "GATEWAY_TIMEOUT"),
    521: ("Web server is down", "WEB_SERVER_DOWN"),
    522: ("Connection timed out", "CONNECTION_TIMED_OUT"),
    523: ("Origin is unreachable", "ORIGIN_UNREACHABLE"),
    524: ("A timeout occurred", "TIMEOUT_OCCURRED"),
    525: ("SSL handshake failed", "SSL_HANDSHAKE_FAILED"),
    526: ("Invalid SSL certificate", "INVALID_SSL_CERTIFICATE"),
}


def fault(status: int) -> ApiError:
    message, category = FAULT_MESSAGES[status]
    # 423: locked for about 2 s; 477: migration, Retry-After in seconds (facts file, section 5).
    headers = {"Retry-After": "2"} if status in (423, 477) else {}
    return ApiError(status, error_body(message, category), headers)


def oauth_error(status_code: str, error: str, description: str, http_status: int = 400) -> ApiError:
    """OAuth endpoints answer in their own shape (``status`` holds a code, not "error")."""
    return ApiError(
        http_status,
        {
            "status": status_code,
            "message": description,
            "correlationId": correlation_id(),
            "error": error,
            "error_description": description,
        },
    )
