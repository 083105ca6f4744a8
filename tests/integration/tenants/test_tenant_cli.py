"""``hubsync tenant list|show|delete`` (issue 13, part B) against the real services.

A portal is filled through the running suite (connected in auth, a HubSpot change through the
signed webhook into ingress and mapper, a push through mapper and writer into HubSpot), its keys
are copied to two neighbour portals (``{1234}`` and ``{123456}``: the same digits, so a sloppy
pattern would hit them), and the CLI deletes it as an operator runs it: a process with the
Redis settings and the ``cli`` token.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from hubsync.api.auth.v1 import auth_pb2
from hubsync.core import keys
from hubsync.core.redis import redis_from_url
from hubsync.core.tenants import TenantStore, key_pattern
from tests.helpers.redis_faults_stack import PORTAL, Stack, running_stack

NEIGHBOURS = (1234, 123456)


@pytest.fixture
async def stack(tmp_path: Path, caller_tokens: dict[str, str]) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path, caller_tokens) as s:
        yield s


def hubsync(stack: Stack, caller_tokens: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBSYNC_")}
    env |= {
        "HUBSYNC_REDIS_URL": stack.redis.url,
        "HUBSYNC_AUTH_ADDRESS": stack.auth_address,
        "HUBSYNC_CLI_TOKEN": caller_tokens["cli"],
        "COLUMNS": "250",
    }
    return subprocess.run(
        [sys.executable, "-m", "hubsync.cli", "tenant", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def run_cli(
    stack: Stack, caller_tokens: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(hubsync, stack, caller_tokens, *args)


async def portal_keys(redis: Redis, portal: int) -> dict[bytes, bytes]:
    """Every key of the portal with its serialized value (DUMP, to copy it)."""
    found = [k async for k in redis.scan_iter(match=keys.portal_key_pattern(portal), count=1000)]
    dumps = [await redis.dump(k) for k in found]
    return {k: d for k, d in zip(found, dumps, strict=True) if d is not None}


async def contents(redis: Redis, portal: int) -> dict[bytes, object]:
    """Every key of the portal with its content (DUMP of a hash is not stable: its order moves)."""
    out: dict[bytes, object] = {}
    for key in await portal_keys(redis, portal):
        kind = (await redis.type(key)).decode()  # type: ignore[union-attr]
        value: object
        if kind == "hash":
            value = await redis.hgetall(key)  # type: ignore[misc]
        elif kind == "set":
            value = sorted(await redis.smembers(key))  # type: ignore[misc]
        elif kind == "zset":
            value = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            groups = [
                (g["name"], g["pending"], g["last-delivered-id"]) for g in await redis.xinfo_groups(key)
            ]
            value = (await redis.xrange(key), groups)
        else:
            value = await redis.dump(key)
        out[key] = (kind, value)
    return out


async def fill_portal(stack: Stack, redis: Redis) -> set[str]:
    """Work for the portal through the real services; returns the key patterns it left."""
    await stack.create_contact("ann@example.com")  # webhook → ingress → mapper → feed
    pushed = await stack.push("ext-1", "Ann")  # mapper → writer → HubSpot
    assert pushed.results and not pushed.results[0].error, pushed
    # Connection (auth), journal and dedupe (ingress), feed and fingerprints (mapper), what was
    # written and the rate limiter's state (writer).
    wanted = {":auth:connection", ":events", ":seen:", ":feed:", ":fp:", ":written:", ":rl:daily"}
    patterns: set[str] = set()
    for _ in range(300):
        patterns = {key_pattern(k.decode()) for k in await portal_keys(redis, PORTAL)}
        if all(any(w in p for p in patterns) for w in wanted):
            return patterns
        await asyncio.sleep(0.1)
    raise AssertionError(f"the services did not fill portal {PORTAL}: {sorted(patterns)}")


async def copy_to_neighbours(redis: Redis) -> dict[int, dict[bytes, object]]:
    source = await portal_keys(redis, PORTAL)
    copies: dict[int, dict[bytes, object]] = {}
    for neighbour in NEIGHBOURS:
        for key, dumped in source.items():
            other = key.replace(f"{{{PORTAL}}}".encode(), f"{{{neighbour}}}".encode(), 1)
            await redis.restore(other, 0, dumped, replace=True)
        # In registries no service polls (the services would start working for the copies).
        await redis.sadd(keys.AUTH_NEEDS_REAUTH_KEY, str(neighbour))  # type: ignore[misc]
        await redis.zadd(keys.AUTH_CONNECTIONS_KEY, {str(neighbour): neighbour})
        copies[neighbour] = await contents(redis, neighbour)
    return copies


async def registries_holding(redis: Redis, portal: int) -> list[str]:
    held = []
    for key in keys.portal_indexes(portal):
        kind = (await redis.type(key)).decode()  # type: ignore[union-attr]
        member = str(portal)
        if (kind == "set" and await redis.sismember(key, member)) or (  # type: ignore[misc]
            kind == "zset" and await redis.zscore(key, member) is not None
        ):
            held.append(key)
    return held


async def test_delete_removes_every_key_of_the_portal_and_nothing_else(
    stack: Stack, caller_tokens: dict[str, str]
) -> None:
    redis = redis_from_url(stack.redis.url)
    try:
        patterns = await fill_portal(stack, redis)
        copies = await copy_to_neighbours(redis)
        assert await registries_holding(redis, PORTAL)

        listed = await run_cli(stack, caller_tokens, "list", "--json")
        assert listed.returncode == 0, listed.stderr
        rows = {r["portal_id"]: r for r in map(json.loads, listed.stdout.splitlines())}
        assert set(rows) == {PORTAL, *NEIGHBOURS}
        assert rows[PORTAL]["connection"] == "active" and rows[PORTAL]["events"]

        shown = await run_cli(stack, caller_tokens, "show", "--portal", str(PORTAL))
        assert shown.returncode == 0, shown.stderr
        state = json.loads(shown.stdout)
        assert state["connection"]["state"] == "active" and state["connection"]["holds_credentials"]
        assert "sealed" not in state["connection"] and "pat-" not in shown.stdout  # no secret
        assert state["streams"][keys.events_key(PORTAL)]["length"] >= 1
        assert set(state["dead_letters"]) == {"writer", "inbound"}
        assert state["last_activity_ms"] > 0

        # Without --yes: a dry run that says what it would remove, and removes nothing.
        before = await portal_keys(redis, PORTAL)
        dry = await run_cli(stack, caller_tokens, "delete", "--portal", str(PORTAL))
        assert dry.returncode == 2 and "--yes" in dry.stdout, dry.stdout + dry.stderr
        assert set(await portal_keys(redis, PORTAL)) == set(before)

        done = await run_cli(stack, caller_tokens, "delete", "--portal", str(PORTAL), "--revoke", "--yes")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "revoked" in done.stdout
        for pattern in patterns:
            assert pattern in done.stdout, f"{pattern} not reported:\n{done.stdout}"
        assert str(len(before)) in done.stdout

        # Nothing of the portal is left; the neighbours hold what they held.
        assert await portal_keys(redis, PORTAL) == {}
        assert await registries_holding(redis, PORTAL) == []
        for neighbour, copied in copies.items():
            assert await contents(redis, neighbour) == copied
            assert len(await registries_holding(redis, neighbour)) == 2

        # Idempotent: again, nothing to do.
        again = await run_cli(stack, caller_tokens, "delete", "--portal", str(PORTAL), "--yes")
        assert again.returncode == 0 and "nothing to delete" in again.stdout, again.stdout

        # The connection is gone in auth too.
        with pytest.raises(Exception, match="NOT_FOUND"):
            await stack.auth.GetConnection(auth_pb2.GetConnectionRequest(portal_id=PORTAL), timeout=10)
    finally:
        await redis.aclose()


async def test_list_pages_through_100000_portals_each_once(redis: Redis) -> None:
    connected = [str(p) for p in range(1, 100_001)]
    for i in range(0, len(connected), 10_000):
        chunk = connected[i : i + 10_000]
        await redis.zadd(keys.AUTH_CONNECTIONS_KEY, {m: int(m) for m in chunk})
    # Half of them also sent events; 5,000 more only queued writes.
    await redis.sadd(keys.PORTALS_KEY, *connected[::2])  # type: ignore[misc]
    await redis.sadd(keys.WRITER_PORTALS_KEY, *[str(p) for p in range(200_001, 205_001)])  # type: ignore[misc]
    store = TenantStore(redis)
    seen: list[int] = []
    largest = 0
    token = ""
    while True:
        rows, token = await store.list_portals(1_000, token)
        largest = max(largest, len(rows))
        seen += [r.portal_id for r in rows]
        if not token:
            break
    assert len(seen) == len(set(seen)) == 105_000
    assert largest <= 2_000  # pages, never everything at once


async def test_show_and_delete_of_an_unknown_portal_say_so(redis: Redis) -> None:
    store = TenantStore(redis)
    report = await store.delete(999)
    assert report.total == 0 and report.registries == [] and report.remaining == 0
    with pytest.raises(ValueError):
        await store.list_portals(10, "not-a-token")


async def test_delete_removes_the_portals_feed_marks_of_every_group(redis: Redis) -> None:
    portal, neighbour = 42, 4242
    for p in (portal, neighbour):
        await redis.xadd(keys.feed_key(p, "contacts"), {"v": "1"})
        await redis.xadd(keys.feed_key(p, "p_cars"), {"v": "1"})
    await redis.sadd(keys.FEED_GROUPS_KEY, "crm", "billing")  # type: ignore[misc]
    marked = sorted(
        key
        for group in ("crm", "billing")
        for t in ("contacts", "p_cars")
        for key in (keys.feed_ready_key(group, t), keys.feed_pending_key(group, t))
    )
    for key in marked:
        await redis.zadd(key, {str(portal): 1, str(neighbour): 1})
    store = TenantStore(redis)
    assert set(marked) <= set((await store.census(portal)).registries)

    report = await store.delete(portal)
    # It says so, and every group's marks of the portal are gone; the neighbour keeps its own.
    assert set(marked) <= set(report.registries), report.registries
    for key in marked:
        assert await redis.zscore(key, str(portal)) is None, key
        assert await redis.zscore(key, str(neighbour)) == 1, key
    assert (await store.census(portal)).registries == []
