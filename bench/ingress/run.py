"""Ingress throughput benchmark: bare handler floor, 1-event and 100-event webhook requests.

    .venv/bin/python bench/ingress/run.py [--duration 10] [--connections 64]

Server pinned to CPU 0, wrk and redis-server to CPU 1 (``taskset``). Requests are pre-signed (v3)
and each carries events never sent before, so every one takes the full path: verify, parse,
dedupe, XADD. Then the dedupe memory is measured by committing a steady hour of events through
the same committer. Writes ``results.md`` and ``results.json`` next to this file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
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
from hubsync.ingress.committer import EventCommitter
from hubsync.ingress.events import parse_events

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
SECRET = "bench-client-secret"
PORTAL = 12345
SERVER_CPU = "0"
LOAD_CPU = "1"


def make_event(n: int, now: int) -> dict[str, Any]:
    return {
        "objectId": 1_000_000 + n,
        "propertyName": "lifecyclestage",
        "propertyValue": "subscriber",
        "changeSource": "CRM_UI",
        "sourceId": "userId:1",
        "eventId": 3_816_279_340 + n,
        "subscriptionId": 25,
        "portalId": PORTAL,
        "appId": 1001,
        "occurredAt": now - (n % 1000),
        "subscriptionType": "contact.propertyChange",
        "attemptNumber": 0,
    }


def write_requests(path: Path, url: str, count: int, per_request: int, start: int) -> None:
    now = int(time.time() * 1000)
    with path.open("wb") as out:
        n = start
        for _ in range(count):
            body = orjson.dumps([make_event(n + i, now) for i in range(per_request)])
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


def run_wrk(url: str, requests_file: Path | None, duration: int, connections: int, threads: int = 2) -> str:
    cmd = ["taskset", "-c", LOAD_CPU, "wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s",
           "--latency", "--timeout", "10s"]  # fmt: skip
    if requests_file is not None:
        cmd += ["-s", str(HERE / "signed_requests.lua"), url, "--", str(requests_file), str(threads)]
    else:
        cmd += ["-s", str(HERE / "bare_post.lua"), url]
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


async def redis_numbers(url: str) -> dict[str, float]:
    redis = Redis.from_url(url)
    try:
        stream = f"hubsync:{{{PORTAL}}}:events"
        length = await redis.xlen(stream)
        seen_bytes = 0
        seen_keys = 0
        async for key in redis.scan_iter(f"hubsync:{{{PORTAL}}}:seen:*", count=1000):
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
            redis, stream_maxlen=1000, dedupe_ttl_s=90_000, dedupe_buckets=buckets, timeout_s=30
        )
        hour = 1_700_000_000_000 // 3_600_000 * 3_600_000
        chunk = 1000
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


async def flush(url: str) -> None:
    client = Redis.from_url(url)
    await client.flushall()
    await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--memory-events", type=int, default=400_000)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ingress-bench-"))
    redis = RedisProcess(work / "redis").start()
    # Redis shares the load generator's core: the server under test has CPU 0 to itself.
    subprocess.run(["taskset", "-pc", LOAD_CPU, str(redis.proc.pid)], check=True, capture_output=True)  # type: ignore[union-attr]
    python = sys.executable
    results: dict[str, Any] = {}
    try:
        # 1. the floor
        port = free_port()
        proc = start_server(
            [python, str(HERE / "bare_app.py"), str(port)], dict(os.environ), work / "bare.log"
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/")
            body_file = work / "bare.txt"
            write_requests(body_file, f"http://127.0.0.1:{port}/webhooks/hubspot", 20_000, 1, 0)
            out = run_wrk(f"http://127.0.0.1:{port}", body_file, args.duration, args.connections)
            results["bare"] = parse_wrk(out) | {"events_per_request": 1}
        finally:
            stop(proc)

        # 2./3. ingress with 1-event and 100-event requests
        scenarios: tuple[tuple[str, int, int, dict[str, str]], ...] = (
            ("ingress_1", 1, 150_000, {}),
            ("ingress_1_no_server_span", 1, 150_000, {"HUBSYNC_INGRESS_HTTP_SERVER_SPANS": "false"}),
            (
                "ingress_1_sampled_10pct",
                1,
                150_000,
                {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
            ),
            ("ingress_100", 100, 4_000, {}),
        )
        for name, per_request, count, extra in scenarios:
            asyncio.run(flush(redis.url))
            port = free_port()
            url = f"http://127.0.0.1:{port}/webhooks/hubspot"
            env = {k: v for k, v in os.environ.items() if not k.startswith(("HUBSYNC_", "OTEL_"))}
            env |= {
                "HUBSYNC_REDIS_URL": redis.url,
                "HUBSYNC_GRPC_PORT": str(free_port()),
                "HUBSYNC_LOG_LEVEL": "WARNING",
                "HUBSYNC_INGRESS_HTTP_PORT": str(port),
                "HUBSYNC_INGRESS_WEBHOOK_SECRETS": json.dumps([SECRET]),
                "HUBSYNC_INGRESS_RECONCILE_INTERVAL_SECONDS": "0",
                **extra,
            }
            requests_file = work / f"{name}.txt"
            write_requests(requests_file, url, count, per_request, 0)
            proc = start_server([python, "-m", "hubsync.ingress"], env, work / f"{name}.log")
            try:
                wait_http(f"http://127.0.0.1:{port}/healthz")
                out = run_wrk(f"http://127.0.0.1:{port}", requests_file, args.duration, args.connections)
                parsed = parse_wrk(out)
                stored = asyncio.run(redis_numbers(redis.url))
                results[name] = parsed | stored | {"events_per_request": per_request, "pool": count}
            finally:
                stop(proc)
            requests_file.unlink()
        results["dedupe_memory"] = asyncio.run(dedupe_memory(redis.url, args.memory_events, 4096))
    finally:
        redis.stop()
    meta = {
        "command": "taskset: server CPU 0, wrk+redis CPU 1; "
        + " ".join(["bench/ingress/run.py", *sys.argv[1:]]),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
        "duration_s": args.duration,
        "connections": args.connections,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (HERE / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    (HERE / "results.md").write_text(render(meta, results))
    print(json.dumps({"meta": meta, "results": results}, indent=2))


def render(meta: dict[str, Any], results: dict[str, Any]) -> str:
    lines = [
        "# ingress benchmark results",
        "",
        f"- command: `{meta['command']}`",
        f"- machine: {meta['machine']} (shared with other engineers' test runs: expect noise)",
        f"- {meta['duration_s']} s per scenario, {meta['connections']} connections, {meta['date']}",
        "",
        "| scenario | req/s | events/s | p50 ms | p99 ms | non-2xx |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("bare", "ingress_1", "ingress_1_no_server_span", "ingress_1_sampled_10pct", "ingress_100"):
        r = results[name]
        lines.append(
            f"| {name} | {r['rps']:.0f} | {r['rps'] * r['events_per_request']:.0f} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['non2xx']:.0f} |"
        )
    ratio = results["ingress_1"]["rps"] / results["bare"]["rps"]
    mem = results["dedupe_memory"]
    lines += [
        "",
        f"- ingress 1-event / bare: {ratio:.2f} (goal >= 0.5); without the webhook server span "
        f"(HUBSYNC_INGRESS_HTTP_SERVER_SPANS=false): "
        f"{results['ingress_1_no_server_span']['rps'] / results['bare']['rps']:.2f}; with 10 % of "
        f"traces sampled (OTEL_TRACES_SAMPLER=parentbased_traceidratio, ARG 0.1): "
        f"{results['ingress_1_sampled_10pct']['rps'] / results['bare']['rps']:.2f}",
        f"- ingress 100-event: {results['ingress_100']['rps'] * 100:.0f} events/s (goal >= 20,000)",
        f"- dedupe memory, {mem['events']:.0f} events of one hour over {mem['buckets']:.0f} buckets: "
        f"{mem['bytes_per_event']:.1f} B/event (encodings {mem['encodings']}); one SET NX EX key per "
        f"event on the same Redis: {mem['set_nx_bytes_per_event']:.1f} B/event",
        "- dedupe B/event right after the runs: "
        f"1-event {results['ingress_1']['dedupe_bytes_per_event']:.1f}, "
        f"100-event {results['ingress_100']['dedupe_bytes_per_event']:.1f}; stream (the journal) "
        f"{results['ingress_100']['stream_bytes_per_event']:.0f} B/event",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
