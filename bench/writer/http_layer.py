"""Writer's CPU per HubSpot request in its HTTP layer (``HubSpotClient._request``).

The sandbox runs as its own process (``python -m hubsync.sandbox``, no rate limits); this
process sends batch reads of ``--ids`` contacts (100, or 1 as most reads are when traffic is spread
over many portals) through the writer's HubSpot client's HTTP layer alone (no limiter, breaker or
token: those are Redis calls, measured elsewhere), ``--in-flight`` at a time, on uvloop as writer
runs, with tracing configured as the services configure it (its own HTTP span included).
Reported: this process's CPU per request (``time.process_time``), which is the
layer's cost plus a small loop overhead, per round, and the median.

Run it on two trees to compare them (the same file, copied into the other tree):

    .venv/bin/python bench/writer/http_layer.py --out bench/writer/results/http_layer.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import uvloop

from hubsync.core.telemetry import setup_tracing
from hubsync.writer.hubspot_client import HubSpotClient

TOKEN = "pat-na1-00000000-0000-4000-8000-000000012345"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def measure(client: HubSpotClient, ids: list[str], requests: int, in_flight: int) -> float:
    """CPU µs per request over ``requests`` batch reads of ``ids``."""
    body = read_body(ids)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            raw = await client._request(
                "POST", "/crm/v3/objects/contacts/batch/read", body, None, headers, 30.0
            )
            status = getattr(raw, "status", None) or getattr(raw, "status_code", 0)  # either tree
            if status != 200 or raw.content.count(b'"id"') < len(ids):
                raise RuntimeError(f"unexpected answer {status}")

    cpu = time.process_time()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return 1e6 * (time.process_time() - cpu) / requests


def read_body(ids: list[str]) -> bytes:
    return json.dumps({"inputs": [{"id": i} for i in ids], "properties": ["email", "firstname"]}).encode()


async def run(args: argparse.Namespace, base: str, ids: list[str]) -> dict[str, Any]:
    setup_tracing("writer")
    client = HubSpotClient(base, None, None, None, None)  # type: ignore[arg-type]  # _request only
    try:
        await measure(client, ids, 50, args.in_flight)  # warm-up: connections open
        rounds = [await measure(client, ids, args.requests, args.in_flight) for _ in range(args.rounds)]
    finally:
        await client.aclose()
    return {
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "requests_per_round": args.requests,
        "in_flight": args.in_flight,
        "ids_per_read": args.ids,
        "cpu_us_per_request": round(statistics.median(rounds)),
        "rounds": [round(r) for r in rounds],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=1000, help="requests per round")
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--ids", type=int, default=100, help="contacts per batch read (1..100)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(["sandbox", "libs", os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen(
        [sys.executable, "-m", "hubsync.sandbox", "--port", str(port), "--no-rate-limits"],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                httpx.get(f"{base}/_sandbox/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            r = c.post(
                "/crm/v3/objects/contacts/batch/create",
                json={
                    "inputs": [
                        {"properties": {"email": f"h{n}@x.com", "firstname": "F", "lastname": "L"}}
                        for n in range(100)
                    ]
                },
            )
            r.raise_for_status()
            ids = [o["id"] for o in r.json()["results"]]
        result = uvloop.run(run(args, base, ids[: args.ids]))
    finally:
        server.terminate()
        server.wait(10)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
