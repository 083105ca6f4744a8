"""Dedupe maths: which set and which member remember that an event was accepted.

A 16-byte BLAKE2b digest of the event identity (:meth:`WebhookEvent.digest`) picks a set
``hubsync:{portal}:seen:<occurred hour>:<bucket>`` and a signed 64-bit member. Members are
integers, so each small set is a Redis *intset*: 8 bytes per event plus the key's share of
overhead (``bench/ingress`` measures bytes/event). Bucketing by the event's own hour means a
retry a day later meets the same set; the enqueue script keeps a set ``dedupe_ttl_s`` past its
last insert.
"""

from __future__ import annotations

import struct

from hubsync.core.keys import dedupe_key
from hubsync.ingress.events import WebhookEvent

__all__ = ["HOUR_MS", "dedupe_slot"]

HOUR_MS = 3_600_000
# A digest's first 8 bytes are the set member (signed), the next 4 pick the bucket.
_MEMBER_AND_BUCKET = struct.Struct(">qI")


def dedupe_slot(event: WebhookEvent, buckets: int) -> tuple[str, int]:
    """Return the dedupe set key and the signed 64-bit member of an event.

    Args:
        event: The event to remember.
        buckets: How many sets one portal's hour is spread over (``DEDUPE_BUCKETS``).

    Returns:
        The set's key and the member to add to it.

    """
    member, bucket = _MEMBER_AND_BUCKET.unpack_from(event.digest())
    return dedupe_key(event.portal_id, event.occurred_at // HOUR_MS, bucket % buckets), member
