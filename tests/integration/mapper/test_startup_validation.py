"""Mapper's start-up check of the default mappings costs the same at any number of portals.

The check asks writer for a portal's properties; with every known portal checked, a restarted
mapper at 10,000 portals made 10,000 writer calls before it served (bench/tenants). Now it checks
``VALIDATE_PORTAL_IDS``, else a random sample of ``VALIDATE_MAX_PORTALS`` known portals.
"""

from __future__ import annotations

import logging

import pytest
from redis.asyncio import Redis

from hubsync.core.keys import PORTALS_KEY
from tests.helpers.mapper import running_mapper

UNVERIFIED = "mapping targets not verified"


async def test_start_up_checks_a_sample_of_the_known_portals_not_all(
    redis_url: str, redis: Redis, caller_tokens: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    # 60 known portals; writer unreachable, so each portal checked logs one warning (and the
    # check never blocks the start).
    await redis.sadd(PORTALS_KEY, *[str(900_000 + i) for i in range(60)])  # type: ignore[misc]
    caplog.set_level(logging.WARNING, logger="hubsync.mapper")
    async with running_mapper(
        redis_url,
        caller_tokens,
        inbound_enabled=False,
        settings={"validate_properties": True, "validate_max_portals": 5},
    ):
        pass
    checked = [r for r in caplog.records if r.getMessage() == UNVERIFIED]
    assert 1 <= len(checked) <= 5, f"{len(checked)} portals checked at start-up (60 known, sample 5)"
