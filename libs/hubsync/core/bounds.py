"""Bounds on strings callers send that become Redis key parts, consumer groups or metric labels.

A value outside its bound is refused with ``INVALID_ARGUMENT`` and a ``BadRequest`` field
violation, before it reaches Redis: an unbounded one would let any authenticated caller grow keys
and label sets without limit, and a separator inside one could make two keys collide.
"""

from __future__ import annotations

import re

from hubsync.core.errors import InvalidArgument

# What an idempotency key may be: long enough for a UUID, a hash or "<source>:<id>", no more.
REQUEST_ID_MAX = 128
# The writer also takes the ids hubsync derives (mapper's "mapper:<request_id>").
DERIVED_REQUEST_ID_MAX = 200
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]+")
REQUEST_ID_RULE = "letters, digits and . _ : - only"

# Consumer groups and consumer names: Redis consumer groups and metric label values.
NAME_MAX = 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
NAME_RULE = f"1-{NAME_MAX} letters, digits and . _ - starting with a letter or digit"

# External record ids: the last part of a fingerprint key; any printable text, bounded.
EXTERNAL_ID_MAX = 256


def request_id_problem(value: str, *, required: bool = True, max_length: int = REQUEST_ID_MAX) -> str | None:
    """What is wrong with ``value`` as a request_id, or None."""
    if not value:
        return "required: it makes the call idempotent" if required else None
    if len(value) > max_length:
        return f"at most {max_length} characters"
    if not _REQUEST_ID.fullmatch(value):
        return REQUEST_ID_RULE
    return None


def check_request_id(value: str, *, required: bool = True, max_length: int = REQUEST_ID_MAX) -> None:
    """Raises InvalidArgument (field ``request_id``) unless ``value`` is a valid request_id."""
    problem = request_id_problem(value, required=required, max_length=max_length)
    if problem:
        raise InvalidArgument(f"invalid request_id: {problem}", violations={"request_id": problem})


def name_problem(value: str) -> str | None:
    """What is wrong with ``value`` as a consumer group or consumer name, or None."""
    if not value or len(value) > NAME_MAX or not _NAME.fullmatch(value):
        return NAME_RULE
    return None


def external_id_problem(value: str) -> str | None:
    """What is wrong with ``value`` as an external record id, or None."""
    if not value:
        return "required: records are upserted by it"
    if len(value) > EXTERNAL_ID_MAX:
        return f"at most {EXTERNAL_ID_MAX} characters"
    if not value.isprintable():
        return "printable characters only"
    return None
