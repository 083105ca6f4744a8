"""HubSpot webhook signatures, v1, v2 and v3, computed exactly as HubSpot does.

- v1: ``sha256_hex(client_secret + body)`` (plain SHA-256, not HMAC)
- v2: ``sha256_hex(client_secret + method + uri + body)``
- v3: ``base64(HMAC_SHA256(client_secret, method + uri + body + timestamp))``, where ``uri`` is
  the full URL HubSpot called with exactly these escapes decoded:
  ``%3A %2F %3F %40 %21 %24 %27 %28 %29 %2A %2C %3B`` (nothing else, so ``%20`` stays).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

_V3_DECODES = {
    "%3A": ":",
    "%2F": "/",
    "%3F": "?",
    "%40": "@",
    "%21": "!",
    "%24": "$",
    "%27": "'",
    "%28": "(",
    "%29": ")",
    "%2A": "*",
    "%2C": ",",
    "%3B": ";",
}
_V3_PATTERN = re.compile("|".join(_V3_DECODES), re.IGNORECASE)
MAX_SKEW_MS = 5 * 60 * 1000


def v3_uri(uri: str) -> str:
    """Decodes exactly the escapes HubSpot decodes before hashing a v3 signature."""
    return _V3_PATTERN.sub(lambda m: _V3_DECODES[m.group(0).upper()], uri)


def sign_v1(secret: str, body: bytes) -> str:
    """HubSpot's v1 webhook signature: hex SHA-256 of secret + body."""
    return hashlib.sha256(secret.encode() + body).hexdigest()


def sign_v2(secret: str, method: str, uri: str, body: bytes) -> str:
    """HubSpot's v2 webhook signature: hex SHA-256 of secret + method + URI + body."""
    return hashlib.sha256(secret.encode() + method.encode() + uri.encode() + body).hexdigest()


def v3_message(method: str, uri: str, body: bytes, timestamp_ms: int | str) -> bytes:
    """What a v3 signature covers: method, the decoded URI, the raw body, the timestamp."""
    decoded = v3_uri(uri) if "%" in uri else uri  # every decoded escape starts with %
    return b"".join((method.encode(), decoded.encode(), body, str(timestamp_ms).encode()))


def v3_signature(key: bytes, message: bytes) -> bytes:
    """base64(HMAC-SHA256(client secret, :func:`v3_message`)), as HubSpot sends it."""
    return base64.b64encode(hmac.digest(key, message, "sha256"))


def sign_v3(secret: str, method: str, uri: str, body: bytes, timestamp_ms: int | str) -> str:
    """HubSpot's v3 webhook signature (HMAC-SHA256, base64) of method, URI, body, timestamp."""
    return v3_signature(secret.encode(), v3_message(method, uri, body, timestamp_ms)).decode()


def timestamp_fresh(timestamp_ms: int, now_ms: int, max_skew_ms: int = MAX_SKEW_MS) -> bool:
    """True when the timestamp is within the window, in the past or the future."""
    return abs(now_ms - timestamp_ms) <= max_skew_ms


def constant_time_equal(a: str, b: str) -> bool:
    """Compares two signatures in constant time."""
    return hmac.compare_digest(a.encode(), b.encode())
