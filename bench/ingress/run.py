"""Ingress throughput benchmark: bare handler floor, 1-event and 100-event webhook requests.

    .venv/bin/python bench/ingress/run.py [--rounds 6] [--slice 5] [--connections 64]

Server pinned to CPU 0, wrk and redis-server to CPU 1 (``taskset``). Requests are pre-signed (v3)
and each carries events never sent before, so every one takes the full path: verify, parse,
dedupe, XADD. Every server (the bare handler and each ingress scenario) is started once and kept
running; each round gives every server one ``--slice``-second wrk run in turn, and a scenario's
ratio to the floor is taken within a round, then the median over rounds. On a shared machine
whose speed drifts by tens of percent from minute to minute, this compares like with like. The
server's CPU time per request (from ``/proc``) is reported beside the rates. Then the dedupe
memory is measured by committing a steady hour of events through the same committer. Writes
``results.md`` and ``results.json`` next to this file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from redis.asyncio import Redis

from hubsync.core.devredis import RedisProcess, free_port
from hubsync.hubspot.signatures import sign_v3
from hubsync.ingress.committer import EventAppender, EventCommitter
from hubsync.ingress.events import parse_events

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
SECRET = "bench-client-secret"
PORTAL = 12345
SERVER_CPU = "0"
LOAD_CPU = "1"


def make_event(n: int, now: int, portal: int = PORTAL) -> dict[str, Any]:
    return {
        "objectId": 1_000_000 + n,
        "propertyName": "lifecyclestage",
        "propertyValue": "subscriber",
        "changeSource": "CRM_UI",
        "sourceId": "userId:1",
        "eventId": 3_816_279_340 + n,
        "subscriptionId": 25,
        "portalId": portal,
        "appId": 1001,
        "occurredAt": now - (n % 1000),
        "subscriptionType": "contact.propertyChange",
        "attemptNumber": 0,
    }


def write_requests(
    path: Path, url: str, count: int, per_request: int, start: int, portal: int = PORTAL
) -> None:
    now = int(time.time() * 1000)
    with path.open("wb") as out:
        n = start
        for _ in range(count):
            body = orjson.dumps([make_event(n + i, now, portal) for i in range(per_request)])
            n += per_request
            sig = sign_v3(SECRET, "POST", url, body, now)
            out.write(f"{sig}\t{now}\t".encode() + body + b"\n")


def parse_wrk(output: str) -> dict[str, float]:
    def seconds(value: str) -> float:
        number, unit = re.match(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
        return float(number) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]

    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))}  # type: ignore[union-attr]
    for pct in ("50", "99"):
        found = re.search(rf"\s{pct}(?:\.000)?%\s+([\d.]+\w+)", output)
        result[f"p{pct}_ms"] = seconds(found.group(1)) * 1000 if found else float("nan")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    result["non2xx"] = float(non2xx.group(1)) if non2xx else 0.0
    errors = re.search(r"Socket errors:(.*)", output)
    result["socket_errors"] = errors.group(1).strip() if errors else ""  # type: ignore[assignment]
    return result


def run_wrk(url: str, requests_file: Path, duration: int, connections: int, threads: int = 2) -> str:
    cmd = ["taskset", "-c", LOAD_CPU, "wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s",
           "--latency", "--timeout", "10s", "-s", str(HERE / "signed_requests.lua"), url, "--",
           str(requests_file), str(threads)]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def wait_http(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise TimeoutError(url)


def start_server(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    return subprocess.Popen(
        ["taskset", "-c", SERVER_CPU, *argv], env=env, stdout=handle, stderr=subprocess.STDOUT
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def redis_numbers(url: str, portal: int = PORTAL) -> dict[str, float]:
    redis = Redis.from_url(url)
    try:
        stream = f"hubsync:{{{portal}}}:events"
        length = await redis.xlen(stream)
        seen_bytes = 0
        seen_keys = 0
        async for key in redis.scan_iter(f"hubsync:{{{portal}}}:seen:*", count=1000):
            seen_bytes += int(await redis.memory_usage(key, samples=0) or 0)
            seen_keys += 1
        stream_bytes = int(await redis.memory_usage(stream, samples=0) or 0) if length else 0
        return {
            "events": float(length),
            "dedupe_keys": float(seen_keys),
            "dedupe_bytes_per_event": seen_bytes / length if length else 0.0,
            "stream_bytes_per_event": stream_bytes / length if length else 0.0,
        }
    finally:
        await redis.aclose()


async def dedupe_memory(url: str, events: int, buckets: int) -> dict[str, float]:
    """A steady hour at ~500 events/s through the real committer: bytes/event of the dedupe sets,
    beside one ``SET NX EX`` key per event (the obvious design) measured on the same Redis."""
    redis = Redis.from_url(url)
    try:
        await redis.flushall()
        committer = EventCommitter(
            EventAppender(redis, retention_ms=1, dedupe_ttl_s=90_000, dedupe_buckets=buckets), timeout_s=30
        )
        hour = 1_700_000_000_000 // 3_600_000 * 3_600_000
        chunk = 100  # HubSpot sends at most 100 events a request; parse_events refuses more
        for start in range(0, events, chunk):
            batch = [
                make_event(start + i, hour + (start + i) % 3_600_000) | {"objectId": start + i}
                for i in range(chunk)
            ]
            await committer.submit(parse_events(orjson.dumps(batch)))
        total = 0
        keys = 0
        encodings: dict[str, int] = {}
        async for key in redis.scan_iter(f"hubsync:{{{PORTAL}}}:seen:*", count=1000):
            total += int(await redis.memory_usage(key, samples=0) or 0)
            keys += 1
            enc = (await redis.object("encoding", key)).decode()
            encodings[enc] = encodings.get(enc, 0) + 1
        await redis.flushall()
        sample = 100_000
        before = int((await redis.info("memory"))["used_memory"])
        pipe = redis.pipeline(transaction=False)
        for i in range(sample):
            pipe.set(f"hubsync:{{{PORTAL}}}:dedupe:{i:020d}:contact.propertyChange", b"1", nx=True, ex=90_000)
            if len(pipe) >= 5000:
                await pipe.execute()
        await pipe.execute()
        after = int((await redis.info("memory"))["used_memory"])
        await redis.flushall()
        return {
            "events": float(events),
            "buckets": float(buckets),
            "keys": float(keys),
            "bytes_per_event": total / events,
            "encodings": encodings,  # type: ignore[dict-item]
            "set_nx_bytes_per_event": (after - before) / sample,
        }
    finally:
        await redis.aclose()


# name, events per request, the ingress service's extra environment (None: the bare handler), portal
SCENARIOS: tuple[tuple[str, int, dict[str, str] | None, int], ...] = (
    ("bare", 1, None, PORTAL),
    ("ingress_1", 1, {}, PORTAL),
    ("ingress_1_request_spans", 1, {"HUBSYNC_INGRESS_WEBHOOK_SPANS": "request"}, PORTAL + 1),
    ("ingress_1_spans_off", 1, {"HUBSYNC_INGRESS_WEBHOOK_SPANS": "off"}, PORTAL + 2),
    ("ingress_100", 100, {}, PORTAL + 3),
)
# Requests signed per slice-second: above the fastest rate seen, so no event is sent twice.
REQUESTS_PER_SECOND = {1: 18_000, 100: 700}


def ingress_env(redis_url: str, port: int, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUBSYNC_", "OTEL_"))}
    return env | {
        "HUBSYNC_REDIS_URL": redis_url,
        "HUBSYNC_GRPC_PORT": str(free_port()),
        "HUBSYNC_LOG_LEVEL": "WARNING",
        "HUBSYNC_INGRESS_HTTP_PORT": str(port),
        "HUBSYNC_INGRESS_WEBHOOK_SECRETS": json.dumps([SECRET]),
        "HUBSYNC_INGRESS_RECONCILE_INTERVAL_SECONDS": "0",
        # gRPC is not measured, but a service never serves it without caller credentials.
        "HUBSYNC_CALLER_TOKENS": json.dumps({"cli": secrets.token_urlsafe(24)}),
        **extra,
    }


def summarise(rounds: list[dict[str, dict[str, float]]]) -> dict[str, Any]:
    """Per scenario: medians over rounds, and its rate as a share of the floor's in each round."""
    summary: dict[str, Any] = {}
    for name, per_request, _extra, _portal in SCENARIOS:
        slices = [r[name] for r in rounds]
        ratios = [r[name]["rps"] / r["bare"]["rps"] for r in rounds]
        cpu_ratios = [r["bare"]["cpu_us_per_request"] / r[name]["cpu_us_per_request"] for r in rounds]
        summary[name] = {
            "events_per_request": per_request,
            "rps": statistics.median(s["rps"] for s in slices),
            "events_per_s": statistics.median(s["rps"] * per_request for s in slices),
            "p50_ms": statistics.median(s["p50_ms"] for s in slices),
            "p99_ms": statistics.median(s["p99_ms"] for s in slices),
            "non2xx": sum(s["non2xx"] for s in slices),
            "cpu_us_per_request": statistics.median(s["cpu_us_per_request"] for s in slices),
            "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "cpu_ratio_median": statistics.median(cpu_ratios),
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--slice", type=int, default=5, help="seconds of load per server per round")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--memory-events", type=int, default=400_000)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ingress-bench-"))
    redis = RedisProcess(work / "redis").start()
    # Redis shares the load generator's core: the server under test has CPU 0 to itself.
    subprocess.run(["taskset", "-pc", LOAD_CPU, str(redis.proc.pid)], check=True, capture_output=True)  # type: ignore[union-attr]
    python = sys.executable
    servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    rounds: list[dict[str, dict[str, float]]] = []
    stored: dict[str, dict[str, float]] = {}
    try:
        for name, _per_request, extra, _portal in SCENARIOS:
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            if extra is None:
                argv = [python, str(HERE / "bare_app.py"), str(port)]
                servers[name] = (start_server(argv, dict(os.environ), work / f"{name}.log"), base)
            else:
                env = ingress_env(redis.url, port, extra)
                servers[name] = (
                    start_server([python, "-m", "hubsync.ingress"], env, work / f"{name}.log"),
                    base,
                )
        for name, (_proc, base) in servers.items():
            wait_http(base + ("/" if name == "bare" else "/healthz"))
        next_event = {name: 0 for name in servers}
        for number in range(args.rounds):
            row: dict[str, dict[str, float]] = {}
            for name, per_request, _extra, portal in SCENARIOS:
                proc, base = servers[name]
                count = REQUESTS_PER_SECOND[per_request] * args.slice
                requests_file = work / f"{name}.txt"
                write_requests(
                    requests_file, base + "/webhooks/hubspot", count, per_request, next_event[name], portal
                )
                next_event[name] += count * per_request
                before = cpu_seconds(proc.pid)
                parsed = parse_wrk(run_wrk(base, requests_file, args.slice, args.connections))
                used = cpu_seconds(proc.pid) - before
                parsed["cpu_us_per_request"] = used / max(1.0, parsed["rps"] * args.slice) * 1e6
                row[name] = parsed
                requests_file.unlink()
            rounds.append(row)
            print(f"round {number + 1}: " + ", ".join(
                f"{n} {r['rps']:.0f}/s ({r['rps'] / row['bare']['rps']:.2f})" for n, r in row.items()
            ), flush=True)  # fmt: skip
        for name, _per_request, extra, portal in SCENARIOS:
            if extra is not None:
                stored[name] = asyncio.run(redis_numbers(redis.url, portal))
    finally:
        for proc, _base in servers.values():
            stop(proc)
    try:
        memory = asyncio.run(dedupe_memory(redis.url, args.memory_events, 4096))
    finally:
        redis.stop()
    results = summarise(rounds)
    for name, numbers in stored.items():
        results[name] |= numbers
    results["dedupe_memory"] = memory
    meta = {
        "command": "taskset: server CPU 0, wrk+redis CPU 1; "
        + " ".join([".venv/bin/python bench/ingress/run.py", *sys.argv[1:]]),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
        "rounds": args.rounds,
        "slice_s": args.slice,
        "connections": args.connections,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    report = {"meta": meta, "results": results, "rounds": rounds}
    (HERE / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (HERE / "results.md").write_text(render(meta, results, rounds))
    print((HERE / "results.md").read_text())


def render(meta: dict[str, Any], results: dict[str, Any], rounds: list[dict[str, dict[str, float]]]) -> str:
    names = [name for name, *_rest in SCENARIOS]
    lines = [
        "# ingress benchmark results",
        "",
        f"- command: `{meta['command']}`",
        f"- machine: {meta['machine']}; shared with other engineers' test runs, so its speed drifts",
        f"- {meta['date']}: {meta['rounds']} rounds; in each, every server (all started once, kept "
        f"running) gets {meta['slice_s']} s of load in turn, {meta['connections']} connections",
        "- bare and ingress run with the same uvicorn settings (httptools on uvloop, no access log, no "
        "lifespan, no `Server` header, no proxy-header middleware); no span exporter is configured "
        "(spans are recorded, then dropped)",
        "- ratio: the scenario's req/s over the bare handler's in the same round; median (min to max) "
        "over rounds. CPU: the server process's µs of CPU per request",
        "",
        "| scenario | req/s | events/s | p50 ms | p99 ms | non-2xx | CPU µs/req | ratio to bare "
        "| CPU ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        r = results[name]
        lines.append(
            f"| {name} | {r['rps']:.0f} | {r['events_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['non2xx']:.0f} | {r['cpu_us_per_request']:.0f} | {r['ratio_median']:.2f} "
            f"({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) | {r['cpu_ratio_median']:.2f} |"
        )
    lines += ["", "Per round (req/s, and the ratio to bare):", "", "| round | " + " | ".join(names) + " |"]
    lines.append("|---" * (len(names) + 1) + "|")
    for number, row in enumerate(rounds, 1):
        cells = [
            f"{row[n]['rps']:.0f}" + ("" if n == "bare" else f" ({row[n]['rps'] / row['bare']['rps']:.2f})")
            for n in names
        ]
        lines.append(f"| {number} | " + " | ".join(cells) + " |")
    one = results["ingress_1"]
    hundred = results["ingress_100"]
    mem = results["dedupe_memory"]
    met = "met" if one["ratio_median"] >= 0.5 else "**not met**"
    lines += [
        "",
        "## Goals",
        "",
        f"- ingress with 1-event requests at ≥ half the bare handler's rate: median ratio "
        f"{one['ratio_median']:.2f} (from {one['ratio_min']:.2f} to {one['ratio_max']:.2f} over "
        f"rounds): {met}",
        f"- ≥ 20,000 events/s with 100-event requests on one process: {hundred['events_per_s']:.0f} "
        f"events/s: {'met' if hundred['events_per_s'] >= 20_000 else '**not met**'}",
        "",
        "## Tracing modes (`HUBSYNC_INGRESS_WEBHOOK_SPANS`)",
        "",
        "- `ingress_1`, `ingress_100`: the default, `round_trip`. HubSpot's requests bring no trace "
        "context; those answered 200 share one `ingress.commit` span per Redis round trip, the root "
        "of their events' traces (a request that brings a `traceparent`, or is refused, gets a "
        "server span of its own).",
        "- `ingress_1_request_spans`: `request`, a server span for every request. The Python "
        "OpenTelemetry SDK's span costs more CPU than the rest of the request's own work: compare "
        "the CPU column.",
        "- `ingress_1_spans_off`: `off`, no span.",
        "",
        "## Dedupe memory",
        "",
        f"- {mem['events']:.0f} events of one hour over {mem['buckets']:.0f} buckets: "
        f"{mem['bytes_per_event']:.1f} B/event (encodings {mem['encodings']}); one SET NX EX key per "
        f"event on the same Redis: {mem['set_nx_bytes_per_event']:.1f} B/event",
        f"- right after the runs: 1-event {one['dedupe_bytes_per_event']:.1f} B/event, 100-event "
        f"{hundred['dedupe_bytes_per_event']:.1f} B/event; the stream (the journal) "
        f"{hundred['stream_bytes_per_event']:.0f} B/event",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
