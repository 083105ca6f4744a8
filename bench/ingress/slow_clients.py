"""Ingress memory (RSS) under stalled large-body connections, and whether webhooks still flow.

    .venv/bin/python bench/ingress/slow_clients.py [--connections 150] [--hold 30] [--src DIR] [--label NAME]

Starts redis-server and ``python -m hubsync.ingress`` (from ``--src``, default this checkout: a
checkout of an older commit measures the code before the edge limits), opens ``--connections``
connections that each send a webhook's headers and all but the last byte of a large body, then
stall. Two attacks, one after the other on a fresh ingress: bodies of 1 MiB (what the review
sent) and bodies just under the ingress's body limit (``MAX_BODY_BYTES`` less 1 KiB, the most a
client can make it hold). While they hold, a signed one-event webhook is posted every 0.5 s.
Reports ingress's RSS (``/proc/<pid>/status``) before, at its peak and at the end of the hold,
how many stalled connections ingress still holds at the end, and the webhooks' statuses. Writes
``slow_clients-<label>.json`` next to this file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.ingress.run import SECRET, ingress_env, make_event, stop, wait_http
from hubsync.core.devredis import RedisProcess, free_port
from hubsync.hubspot.signatures import sign_v3

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
MIB = 1024 * 1024


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pythonpath(src: Path) -> str:
    parts = [src / "libs", src / "sandbox", *sorted((src / "services").iterdir())]
    return os.pathsep.join(str(p) for p in parts)


async def stall(port: int, body_bytes: int) -> tuple[asyncio.StreamWriter, asyncio.Task[bytes]]:
    """One connection: headers and all but the last byte of the body, then nothing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /webhooks/hubspot HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % body_bytes
    )
    writer.write(b"[" + b" " * (body_bytes - 2))
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    return writer, asyncio.create_task(reader.read())


async def post_webhooks(port: int, stop_at: float, statuses: list[int]) -> None:
    url = f"http://127.0.0.1:{port}/webhooks/hubspot"
    async with httpx.AsyncClient(timeout=10) as client:
        n = 0
        while time.monotonic() < stop_at:
            n += 1
            now = int(time.time() * 1000)
            body = json.dumps([make_event(n, now)]).encode()
            headers = {
                "content-type": "application/json",
                "x-hubspot-signature-v3": sign_v3(SECRET, "POST", url, body, now),
                "x-hubspot-request-timestamp": str(now),
            }
            try:
                statuses.append((await client.post(url, content=body, headers=headers)).status_code)
            except httpx.HTTPError:
                statuses.append(0)
            await asyncio.sleep(0.5)


async def attack(port: int, pid: int, connections: int, body_bytes: int, hold_s: float) -> dict[str, Any]:
    baseline = rss_mb(pid)
    stop_at = time.monotonic() + hold_s
    statuses: list[int] = []
    poster = asyncio.create_task(post_webhooks(port, stop_at, statuses))
    opened = await asyncio.gather(*(stall(port, body_bytes) for _ in range(connections)))
    peak = baseline
    while time.monotonic() < stop_at:
        peak = max(peak, rss_mb(pid))
        await asyncio.sleep(0.25)
    end = rss_mb(pid)
    still_open = sum(1 for _, reading in opened if not reading.done())
    answers: dict[str, int] = {}
    for writer, reading in opened:
        if reading.done() and not reading.cancelled() and reading.exception() is None:
            head = reading.result()[:12].decode("latin-1") or "closed"
            answers[head] = answers.get(head, 0) + 1
        reading.cancel()
        writer.close()
    await poster
    return {
        "body_bytes": body_bytes,
        "rss_before_mb": round(baseline, 1),
        "rss_peak_mb": round(peak, 1),
        "rss_end_mb": round(end, 1),
        "stalled_still_open_at_end": still_open,
        "stalled_answers": answers,
        "webhooks_during": {str(s): statuses.count(s) for s in sorted(set(statuses))},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=150)
    parser.add_argument("--hold", type=float, default=30.0, help="seconds the connections stall")
    parser.add_argument("--src", type=Path, default=ROOT, help="checkout whose ingress to run")
    parser.add_argument("--label", default="after")
    parser.add_argument("--max-body-bytes", type=int, default=256 * 1024, help="the ingress's body limit")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisProcess(Path(tmp)).start()
        try:
            for name, size in (("1mib_bodies", MIB), ("bodies_under_limit", args.max_body_bytes - 1024)):
                port = free_port()
                env = ingress_env(redis.url, port, {"PYTHONPATH": pythonpath(args.src.resolve())})
                log = (Path(tmp) / f"{name}.log").open("wb")
                proc = subprocess.Popen(
                    [sys.executable, "-m", "hubsync.ingress"], env=env, stdout=log, stderr=subprocess.STDOUT
                )
                try:
                    wait_http(f"http://127.0.0.1:{port}/healthz")
                    time.sleep(1.0)
                    results[name] = asyncio.run(attack(port, proc.pid, args.connections, size, args.hold))
                finally:
                    stop(proc)
                print(name, json.dumps(results[name]))
        finally:
            redis.stop()
    meta = {
        "command": " ".join([".venv/bin/python bench/ingress/slow_clients.py", *sys.argv[1:]]),
        "src": str(args.src),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    out = HERE / f"slow_clients-{args.label}.json"
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(out)


if __name__ == "__main__":
    main()
