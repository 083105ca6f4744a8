"""The whole suite as separate processes on a local Redis Cluster (three masters): the CI-sized
check that the services run on a cluster. A record pushed by an internal service reaches
HubSpot (writer's queue, rate limiter, version claims, mapper's push markers: Lua and MULTI on
one portal's slot), and an edit in HubSpot reaches a change-feed subscriber (ingress's dedupe
script, mapper's publish transaction, the feed), each stage on whichever node owns the portal.

The rest of the e2e tests run on the cluster with ``HUBSYNC_TEST_REDIS=cluster``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from hubsync.cli.demo import run_demo
from hubsync.cli.suite import Suite
from hubsync.core.devredis import RedisCluster
from hubsync.core.keys import events_key
from hubsync.core.redis import redis_from_url

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def on_cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Suite]:
    async with Suite(Path(tmp_path_factory.mktemp("suite-cluster")), redis_cluster=True) as suite:
        yield suite


@pytest.mark.asyncio(loop_scope="module")
async def test_both_directions_on_a_redis_cluster(on_cluster: Suite) -> None:
    suite = on_cluster
    assert isinstance(suite.redis, RedisCluster) and len(suite.redis.nodes) == 3
    assert await suite.health() == {s: "SERVING" for s in ("auth", "writer", "mapper", "ingress")}

    result = await run_demo(suite, say=lambda *_a, **_k: None)

    assert result.outbound_outcome == "PUSH_OUTCOME_WRITTEN"
    assert result.sandbox_properties["firstname"] == "Ada"
    assert result.inbound_change["fields"]["first_name"] == "Grace"
    assert result.inbound_change["hubspot_id"] == result.hubspot_id
    # The portal's journal is where the cluster client put it: its slot, found from any node.
    redis = redis_from_url(suite.redis.url)
    try:
        assert await redis.xlen(events_key(12345)) >= 1
    finally:
        await redis.aclose()
