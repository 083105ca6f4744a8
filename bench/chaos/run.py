"""Chaos soak: the whole suite as separate processes, under load, while its parts are killed,
HubSpot misbehaves and Redis goes away; then a drain and a verdict from HubSpot's own state.

    .venv/bin/python bench/chaos/run.py [--short] [--redis-kill sigterm|sigkill] [--workdir DIR]

Prints a table, writes the results (with the machine and the command) to
``bench/chaos/results/<utc time>-<profile>-<redis signal>.json`` and exits 0 only when every
correctness check is 0 and every fault recovered, 1 when not, 2 when the harness itself failed.
See bench/chaos/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
from redis.asyncio import Redis
from redis.exceptions import RedisError

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.chaos import checks  # noqa: E402
from bench.chaos.load import (  # noqa: E402
    FEED_GROUP,
    PORTAL,
    FeedSubscriber,
    OutboundDriver,
    create_inbound_records,
)
from bench.chaos.processes import ChaosSuite, HealthLog  # noqa: E402
from bench.chaos.profile import PROFILES, Fault, Profile  # noqa: E402
from hubsync.api.ingress.v1 import ingress_pb2, ingress_pb2_grpc  # noqa: E402
from hubsync.api.writer.v1 import writer_pb2, writer_pb2_grpc  # noqa: E402
from hubsync.cli.demo import connect_sandbox_portal  # noqa: E402
from hubsync.core.redis import group_lag, portal_key  # noqa: E402

RESULTS = Path(__file__).with_name("results")


def say(msg: str) -> None:
    print(f"[{datetime.now(UTC).strftime('%H:%M:%S')}] {msg}", flush=True)


class Soak:
    def __init__(self, profile: Profile, suite: ChaosSuite, http: httpx.AsyncClient) -> None:
        self.p = profile
        self.suite = suite
        self.http = http
        self.clock = 0.0
        self.events: list[dict[str, Any]] = []
        self.health = HealthLog()

    def t(self) -> float:
        return round(time.monotonic() - self.clock, 2)

    async def _until(self, at_s: float) -> None:
        delay = self.clock + at_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    # --- the fault schedule -----------------------------------------------------------------

    async def fault(self, f: Fault) -> None:
        await self._until(f.at_s)
        ev: dict[str, Any] = {"at_s": self.t(), "kind": f.kind, "target": f.target, "down_s": f.down_s}
        self.events.append(ev)
        say(f"fault: {f.kind} {f.target} ({f.down_s:g} s)")
        if f.kind == "kill":
            await self.suite.kill_service(f.target)
            await asyncio.sleep(f.down_s)
            await self.suite.start_service(f.target)
            ev["ended_s"] = self.t()
            with contextlib.suppress(Exception):
                await self.suite.wait_serving(f.target, timeout=90)
                ev["serving_s"] = round(self.t() - ev["ended_s"], 1)
        elif f.kind == "redis":
            await self.suite.stop_redis(f.target)
            await asyncio.sleep(f.down_s)
            await self.suite.start_redis()
            ev["ended_s"] = self.t()
        elif f.kind == "inject":
            rules = [
                {"endpoint": "/crm/v3/*", "status": 429, "error_rate": self.p.error_rate_429},
                {"endpoint": "/crm/v3/*", "status": 503, "error_rate": self.p.error_rate_5xx},
            ]
            added = (await self.http.post("/_sandbox/faults", json=rules)).json()["results"]
            await asyncio.sleep(f.down_s)
            for rule in added:
                await self.http.delete(f"/_sandbox/faults/{rule['id']}")
            ev["ended_s"] = self.t()
        elif f.kind == "slow":
            rule = {"endpoint": "POST /crm/v3/objects/{objectType}/batch/upsert", "latency_ms": 1000}
            added = (await self.http.post("/_sandbox/faults", json=rule)).json()["results"]
            await asyncio.sleep(f.down_s)
            await self.http.delete(f"/_sandbox/faults/{added[0]['id']}")
            ev["ended_s"] = self.t()
        elif f.kind == "hang":
            rule = {
                "endpoint": "POST /crm/v3/objects/{objectType}/batch/read",
                "timeout_s": f.down_s,
                "remaining": 1,
            }
            await self.http.post("/_sandbox/faults", json=rule)
            # ends when the held request is answered (504), at most down_s after it arrives
            await asyncio.sleep(f.down_s)
            ev["ended_s"] = self.t()
        say(f"fault over: {f.kind} {f.target}")

    def note_hang(self, requests: dict[str, Any], wall_clock: float) -> None:
        """When the held ``batch/read`` actually arrived (the rule waits for one)."""
        held = [
            e for e in requests.get("entries", []) if any(f["kind"] == "timeout" for f in e.get("faults", []))
        ]
        for ev in self.events:
            if ev["kind"] == "hang" and held:
                ev["fired_at_s"] = round(held[0]["at"] / 1000 - wall_clock, 2)

    # --- load --------------------------------------------------------------------------------

    async def churn(self, ids: list[str]) -> dict[str, Any]:
        reply = await self.http.post(
            "/_sandbox/ui/contacts/churn",
            params={"portal": PORTAL},
            json={"ids": ids, "property": "firstname", "rate": self.p.edit_rate, "seconds": self.p.load_s},
            timeout=self.p.load_s + 120,
        )
        reply.raise_for_status()
        return dict(reply.json())

    async def outbound(self, driver: OutboundDriver) -> None:
        p = self.p
        await driver.push_paced(list(range(p.creates)), "c", p.push_batch, p.create_window_s)
        say(f"pushed {p.creates} creates")
        among = p.update_among_first or p.creates
        step = max(1, among // max(1, p.updates))
        updated = list(range(0, among, step))[: p.updates]
        await driver.push_paced(updated, "u", p.push_batch, p.update_window_s)
        say(f"pushed {len(updated)} updates")

    # --- drain and reconcile -----------------------------------------------------------------

    async def writer_status(self) -> dict[str, Any]:
        try:
            async with self.suite.channel("writer", "cli") as channel:
                s = await writer_pb2_grpc.WriterServiceStub(channel).GetQuotaStatus(
                    writer_pb2.GetQuotaStatusRequest(portal_id=PORTAL), timeout=5
                )
            return {"queued_writes": s.queued_writes, "dead_letters": s.dead_letters}
        except grpc.aio.AioRpcError as exc:
            return {"error": exc.code().name}

    async def backlog(self) -> int | None:
        """Work not finished downstream of ingress: entries of the portal's webhook event stream
        that mapper has not handled, and changes of the contacts feed the soak's subscriber has
        not acked (not yet delivered, or delivered and not acked); None when Redis cannot say."""
        assert self.suite.redis is not None
        streams = {portal_key(PORTAL, "events"): None, portal_key(PORTAL, "feed", "contacts"): FEED_GROUP}
        total = 0
        try:
            async with Redis.from_url(self.suite.redis.url, socket_timeout=5) as redis:
                for key, only in streams.items():
                    for g in await redis.xinfo_groups(key):
                        name = g.get("name")
                        if only is not None and (name.decode() if isinstance(name, bytes) else name) != only:
                            continue
                        total += await group_lag(redis, key, g) + int(g.get("pending", 0))
        except RedisError:
            return None
        return total

    async def contacts(self) -> list[dict[str, Any]]:
        reply = await self.http.get("/_sandbox/objects/contacts", params={"portal": PORTAL})
        reply.raise_for_status()
        return list(reply.json()["results"])

    async def drain(
        self, driver: OutboundDriver, feed: FeedSubscriber, inbound_ids: dict[str, str]
    ) -> dict[str, Any]:
        """Waits until HubSpot and the subscriber hold every last value and writer's queue is
        empty, or until nothing has moved for ``quiet_s`` with the queue empty (a wrong state
        that will not change), or the timeout."""
        started = time.monotonic()
        last_requests = -1
        last_move = time.monotonic()
        status: dict[str, Any] = {}
        converged = settled = False
        while time.monotonic() - started < self.p.drain_timeout_s:
            contacts = checks.by_external_id(await self.contacts())
            status = await self.writer_status()
            hooks = (await self.http.get("/_sandbox/webhooks")).json()["stats"]
            total = (await self.http.get("/_sandbox/requests", params={"limit": 0})).json()["total"]
            moved = total + len(feed.log.deliveries)
            if moved != last_requests:
                last_requests, last_move = moved, time.monotonic()
            out = checks.outbound_state(driver.log, contacts)
            inb = checks.inbound_state(inbound_ids, contacts, feed.log)
            queue_empty = status.get("queued_writes") == 0 and await self.backlog() == 0
            hooks_idle = hooks["outstandingEvents"] == 0
            delivered = not inb["final_value_not_delivered"]
            if queue_empty and hooks_idle and not out["stale"] and not out["missing"] and delivered:
                converged = True
                break
            if queue_empty and hooks_idle and time.monotonic() - last_move > self.p.quiet_s:
                settled = True
                break  # settled in a wrong state
            await asyncio.sleep(1.0)
        return {
            "seconds": round(time.monotonic() - started, 1),
            # settled: nothing left to do (writer's queue empty, every webhook delivered), by
            # itself; converged: and HubSpot and the subscriber hold every last value
            "settled": settled or converged,
            "converged": converged,
            "writer": status,
        }

    async def reconcile(self, feed: FeedSubscriber) -> dict[str, Any]:
        # records modified in the last RECONCILE_SETTLE_MS (5 s) are left to their webhooks
        await asyncio.sleep(6)
        feed.phase = "reconcile"
        out: dict[str, Any] = {}
        try:
            async with self.suite.channel("ingress", "cli") as channel:
                reply = await ingress_pb2_grpc.IngressServiceStub(channel).Reconcile(
                    ingress_pb2.ReconcileRequest(portal_id=PORTAL, object_types=["contacts"]), timeout=120
                )
            out = {"found": reply.found_count, "scanned": reply.scanned_count}
        except grpc.aio.AioRpcError as exc:
            out = {"error": f"{exc.code().name}: {exc.details()}"}
        # wait until mapper has handled what the pass enqueued and the feed is quiet
        start = time.monotonic()
        n = len(feed.log.deliveries)
        quiet_since = time.monotonic()
        while time.monotonic() - start < self.p.reconcile_timeout_s:
            await asyncio.sleep(1.0)
            if len(feed.log.deliveries) != n or await self.backlog() != 0:
                n, quiet_since = len(feed.log.deliveries), time.monotonic()
            elif time.monotonic() - quiet_since > self.p.quiet_s:
                break
        out["seconds"] = round(time.monotonic() - start, 1)
        return out


async def soak(profile: Profile, workdir: Path) -> dict[str, Any]:
    sandbox = {
        "portals": [{"hub_id": PORTAL}],  # starter: a private app gets 100 requests / 10 s
        "webhook_retry_scale": profile.webhook_retry_scale,
        "request_log_size": 500_000,
        "delivery_log_size": 500_000,
    }
    extra_env = {"ingress": {"HUBSYNC_INGRESS_RECONCILE_INTERVAL_SECONDS": "0"}}
    started = time.monotonic()
    suite = ChaosSuite(workdir, sandbox_config=sandbox, extra_env=extra_env, progress=say)
    async with suite:
        await connect_sandbox_portal(suite)
        async with httpx.AsyncClient(base_url=suite.sandbox_url, timeout=60) as http:
            inbound_ids = await create_inbound_records(http, profile.inbound_records)
            say(f"suite up, {len(inbound_ids)} inbound contacts made in {time.monotonic() - started:.0f} s")
            s = Soak(profile, suite, http)
            s.clock = time.monotonic()
            feed = FeedSubscriber(suite, s.clock, time.time())
            feed_task = asyncio.create_task(feed.run())
            stop_health = asyncio.Event()
            health_task = asyncio.create_task(suite.poll_health(s.health, stop_health, s.clock))
            supervisor = asyncio.create_task(suite.supervise(stop_health, s.clock))
            await asyncio.sleep(2)  # the subscription's group exists before the load
            s.clock += 2
            feed.clock = s.clock
            feed.wall_clock += 2
            driver = OutboundDriver(suite, s.clock, profile.push_retry_s)
            say(f"load: {profile.creates} pushes, {profile.edit_rate:g} UI edits/s for {profile.load_s:g} s")
            churned, *_ = await asyncio.gather(
                s.churn(list(inbound_ids.values())),
                s.outbound(driver),
                *(s.fault(f) for f in profile.faults),
            )
            say(f"load over at t={s.t():.0f} s; draining")
            drain = await s.drain(driver, feed, inbound_ids)
            say(f"drained in {drain['seconds']} s (converged: {drain['converged']}); reconciling")
            recon = await s.reconcile(feed)
            say(f"reconcile: {recon}")
            contacts = await s.contacts()
            requests = (await http.get("/_sandbox/requests")).json()
            s.note_hang(requests, feed.wall_clock)
            hooks = (await http.get("/_sandbox/webhooks")).json()["stats"]
            changes = (await http.get("/_sandbox/changes")).json()["results"]
            feed.stop()
            stop_health.set()
            await asyncio.gather(feed_task, health_task, supervisor, return_exceptions=True)
            # raw material for a closer look (kept with --workdir)
            with (workdir / "deliveries.jsonl").open("w") as f:
                f.writelines(json.dumps(dataclasses.asdict(d)) + "\n" for d in feed.log.deliveries)
            (workdir / "sandbox-changes.json").write_text(json.dumps(changes))
            (workdir / "events.json").write_text(json.dumps(s.events, indent=1))
            return checks.verdict(
                profile,
                driver.log,
                feed.log,
                inbound_ids,
                contacts,
                changes,
                feed.wall_clock,
                requests,
                s.events,
                s.health,
                {
                    "drain": drain,
                    "reconcile": recon,
                    "churn": churned,
                    # restarted by the supervisor, as an orchestrator would (not a manual step)
                    "service_exits": suite.exits,
                    "webhooks": hooks,
                    "wall_seconds": round(time.monotonic() - started, 1),
                },
            )
    raise AssertionError("unreachable")


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        return ""


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = _git("rev-parse", "--short", "HEAD")
    if _git("status", "--porcelain", "--untracked-files=no"):
        commit += " with uncommitted changes"
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "arch": platform.machine(),
        "python": platform.python_version(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "git_commit": commit,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="the CI-sized soak (about 3 minutes)")
    parser.add_argument("--redis-kill", choices=("sigterm", "sigkill"), default="sigterm")
    parser.add_argument("--workdir", type=Path, help="keep the suite's logs and Redis data here")
    parser.add_argument("--out", type=Path, help="results JSON (default: bench/chaos/results/…)")
    args = parser.parse_args(argv)
    profile = PROFILES["short" if args.short else "full"].with_redis_signal(args.redis_kill)
    info = machine()
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            result = asyncio.run(soak(profile, workdir))
        except Exception:
            # the harness itself failed (not a check): say so apart from a failed verdict
            traceback.print_exc()
            for log in sorted((workdir / "logs").glob("*.log")):
                print(f"--- tail of {log.name}\n{log.read_text(errors='replace')[-1500:]}")
            return 2
    info["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result = {
        "command": " ".join(
            [".venv/bin/python bench/chaos/run.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": info,
        "profile": profile.to_dict(),
        **result,
    }
    print(checks.table(result))
    out = args.out or RESULTS / (
        f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{profile.name}-{args.redis_kill}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"results: {out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
