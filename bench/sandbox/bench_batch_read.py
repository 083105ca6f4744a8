"""Benchmark: the sandbox answering CRM batch reads of 100 records on loopback.

The sandbox runs as its own process (``python -m hubsync.sandbox``, uvloop + httptools); this
process is the load generator: a minimal asyncio HTTP/1.1 client with N keep-alive connections,
each sending ``POST /crm/v3/objects/contacts/batch/read`` with 100 ids, back to back.

    PYTHONPATH=sandbox:libs .venv/bin/python bench/sandbox/bench_batch_read.py --seconds 10 --connections 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

TOKEN = "pat-na1-00000000-0000-4000-8000-000000012345"
PATH = "/crm/v3/objects/contacts/batch/read"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_request(port: int, ids: list[str]) -> bytes:
    body = json.dumps({"inputs": [{"id": i} for i in ids], "properties": ["email", "firstname", "lastname"]})
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body.encode()


async def worker(
    port: int, requests: list[bytes], stop: float, lat: list[float], statuses: dict[int, int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    n = 0
    try:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            writer.write(requests[n % len(requests)])
            n += 1
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
            lat.append(time.perf_counter() - t0)
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200 and body.count(b'"id"') != 100:
                raise RuntimeError("a batch read did not return 100 records")
    finally:
        writer.close()


async def run_load(port: int, seconds: float, connections: int, ids: list[str]) -> dict[str, object]:
    rng = random.Random(1)
    requests = [build_request(port, rng.sample(ids, 100)) for _ in range(64)]
    # Warm-up, not measured.
    await asyncio.gather(
        *(worker(port, requests, time.perf_counter() + 1.0, [], {}) for _ in range(connections))
    )
    lat: list[float] = []
    statuses: dict[int, int] = {}
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(port, requests, t0 + seconds, lat, statuses) for _ in range(connections)))
    elapsed = time.perf_counter() - t0
    lat.sort()
    return {
        "requests": len(lat),
        "seconds": round(elapsed, 3),
        "requests_per_s": round(len(lat) / elapsed, 1),
        "records_per_s": round(100 * statuses.get(200, 0) / elapsed, 1),
        "statuses": {str(k): v for k, v in statuses.items()},
        "latency_ms": {
            "p50": round(1000 * lat[len(lat) // 2], 2),
            "p99": round(1000 * lat[int(len(lat) * 0.99)], 2),
            "mean": round(1000 * statistics.fmean(lat), 2),
        },
    }


def machine() -> dict[str, object]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import httptools
    import uvicorn
    import uvloop

    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "uvicorn": uvicorn.__version__,
        "uvloop": uvloop.__version__,
        "httptools": httptools.__version__,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()

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
        ids: list[str] = []
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            for chunk in range(args.records // 100):
                r = c.post(
                    "/crm/v3/objects/contacts/batch/create",
                    json={
                        "inputs": [
                            {
                                "properties": {
                                    "email": f"b{chunk}-{n}@x.com",
                                    "firstname": "F",
                                    "lastname": "L",
                                }
                            }
                            for n in range(100)
                        ]
                    },
                )
                r.raise_for_status()
                ids += [o["id"] for o in r.json()["results"]]
        try:
            import uvloop

            runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        except ImportError:
            runner = asyncio.Runner()
        with runner:
            result = runner.run(run_load(port, args.seconds, args.connections, ids))
        report = {
            "benchmark": (
                "sandbox batch/read of 100 contacts on loopback; server, load generator: 2 processes"
            ),
            "command": " ".join(["PYTHONPATH=sandbox:libs", ".venv/bin/python", *sys.argv]),
            "connections": args.connections,
            "machine": machine(),
            "result": result,
        }
        print(json.dumps(report, indent=2))
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    finally:
        server.terminate()
        server.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
