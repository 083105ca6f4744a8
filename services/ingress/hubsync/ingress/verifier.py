"""Checks that a webhook request really comes from HubSpot (signature versions v3, v1, v2).

v3 is always accepted when its headers are present; v1/v2 only when configured, because they carry
no timestamp and so no replay window. Several client secrets may be active at once (rotation).
Every comparison is constant time.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from hubsync.hubspot.signatures import (
    MAX_SKEW_MS,
    constant_time_equal,
    sign_v1,
    sign_v2,
    timestamp_fresh,
    v3_message,
    v3_signature,
)

__all__ = ["SignatureRejected", "VerifiedRequest", "WebhookVerifier"]


class SignatureRejected(Exception):
    """The request is not signed by an active secret; ``reason`` is a metric label."""

    def __init__(self, reason: str, message: str) -> None:
        """Say why (``reason``, a metric label) and what (``message``, safe to show the sender)."""
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class VerifiedRequest:
    """Which signature version a request was verified with."""

    version: str


class WebhookVerifier:
    """Verifies HubSpot's webhook signature headers against the public URL and the raw body."""

    # Every header :meth:`verify` reads (lower case).
    HEADERS = (
        "x-hubspot-signature-v3",
        "x-hubspot-request-timestamp",
        "x-hubspot-signature",
        "x-hubspot-signature-version",
    )

    def __init__(
        self,
        secrets: Sequence[str],
        *,
        accept_v1: bool = False,
        accept_v2: bool = False,
        max_skew_ms: int = MAX_SKEW_MS,
        now_ms: Callable[[], int] | None = None,
    ) -> None:
        """Set up the verifier with the active client secrets and the legacy versions allowed."""
        self._secrets = list(secrets)
        self._keys = [s.encode() for s in self._secrets]
        self.accept_v1 = accept_v1
        self.accept_v2 = accept_v2
        self.max_skew_ms = max_skew_ms
        self._now_ms = now_ms or (lambda: int(time.time() * 1000))

    def verify(self, method: str, uri: str, body: bytes, headers: Mapping[str, str]) -> VerifiedRequest:
        """Raise :class:`SignatureRejected` unless one active secret signed this request.

        ``uri`` is the full URL HubSpot called (public base URL + raw path + query); ``headers``
        must look names up case-insensitively (Starlette's Headers do).
        """
        if not self._secrets:
            raise SignatureRejected("no_secret", "no webhook secret is configured")
        v3 = headers.get("x-hubspot-signature-v3")
        if v3 is not None:
            return self._verify_v3(method, uri, body, v3, headers.get("x-hubspot-request-timestamp"))
        legacy = headers.get("x-hubspot-signature")
        version = (headers.get("x-hubspot-signature-version") or "").lower()
        if legacy is not None and version == "v1" and self.accept_v1:
            if any(constant_time_equal(sign_v1(s, body), legacy.lower()) for s in self._secrets):
                return VerifiedRequest("v1")
            raise SignatureRejected("bad_signature", "the v1 signature does not match")
        if legacy is not None and version == "v2" and self.accept_v2:
            if any(constant_time_equal(sign_v2(s, method, uri, body), legacy.lower()) for s in self._secrets):
                return VerifiedRequest("v2")
            raise SignatureRejected("bad_signature", "the v2 signature does not match")
        raise SignatureRejected("missing_signature", "no accepted signature (X-HubSpot-Signature-v3)")

    def _verify_v3(
        self, method: str, uri: str, body: bytes, signature: str, timestamp: str | None
    ) -> VerifiedRequest:
        if not timestamp or not timestamp.isdigit() or len(timestamp) > 15:
            raise SignatureRejected("bad_timestamp", "X-HubSpot-Request-Timestamp is missing or not epoch ms")
        if not timestamp_fresh(int(timestamp), self._now_ms(), self.max_skew_ms):
            raise SignatureRejected("stale_timestamp", "the request timestamp is more than 5 minutes off")
        # The message is built once for all secrets.
        message = v3_message(method, uri, body, timestamp)
        expected = signature.encode()
        matched = False
        for key in self._keys:
            # No early exit: the time taken does not tell which secret matched.
            matched |= hmac.compare_digest(v3_signature(key, message), expected)
        if not matched:
            raise SignatureRejected("bad_signature", "the v3 signature does not match")
        return VerifiedRequest("v3")
