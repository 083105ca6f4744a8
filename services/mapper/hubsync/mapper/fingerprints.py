"""Fingerprints of the last state hubsync saw in or wrote to HubSpot, per record and property.

``hubsync:{<portal>}:fp:<object_type>:<external id>`` is a hash: HubSpot property → 8-byte
BLAKE2b digest of its value. The inbound pipeline records what it read; PushRecords records what
writer wrote, and sends only properties whose digest differs — an unchanged record costs no
HubSpot call, and a change that came from HubSpot is not written back (no two-way loop). Values
are kept as digests only: record data is not copied into Redis.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

__all__ = ["FINGERPRINT_TTL_S", "digest", "digest_properties"]

# Fingerprints outlive any retry horizon; a record untouched for this long is simply re-sent once.
FINGERPRINT_TTL_S = 90 * 86_400


def digest(value: str) -> bytes:
    """Return the short digest of one property value."""
    return hashlib.blake2b(value.encode(), digest_size=8).digest()


def digest_properties(properties: Mapping[str, str]) -> dict[str, bytes]:
    """Return the digest of each property value, by name."""
    return {name: digest(value) for name, value in properties.items()}
