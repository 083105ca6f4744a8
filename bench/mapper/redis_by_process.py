"""Redis commands one process sends, counted by command (and key family), while a benchmark runs.

Runs ``MONITOR`` on the benchmark's Redis and keeps the commands whose client address is a socket
of the watched process (its TCP connections, from ``/proc``), for ``--seconds`` from when the
benchmark's measured window starts (``--after-child py-spy``: the first ``py-spy`` child of the
benchmark, which ``fairness.py --py-spy`` starts as the window opens). ``MONITOR`` costs Redis
some CPU (every command is copied to this client): count in a run of its own, not the one whose
CPU you report.

Per turn: the mapper's turns are counted by the ``ZADD`` of its portal to the ``events`` queue's
pending set (one per turn of :meth:`hubsync.core.ready.ReadyConsumer.take`).

Run beside ``bench/tenants/fairness.py --py-spy DIR`` (same machine)::

    .venv/bin/python bench/mapper/redis_by_process.py --bench-pid PID --process hubsync.mapper \
        --seconds 30 --out /tmp/mapper-commands.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import threading
import time
from collections import Counter
from pathlib import Path

import redis

_SOCKET = re.compile(r"socket:\[(\d+)\]")


def children(pid: int) -> list[int]:
    """Every descendant of ``pid``."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            kids = (task / "children").read_text().split() if (task / "children").exists() else []
            for k in kids:
                out.append(int(k))
                todo.append(int(k))
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def local_ports(pid: int) -> set[int]:
    """The local TCP ports of ``pid``'s sockets."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").glob("*"):
        try:
            m = _SOCKET.match(os.readlink(fd))
        except OSError:
            continue
        if m:
            inodes.add(m.group(1))
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            if parts[9] in inodes:
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def family(command: str) -> str:
    """``COMMAND key-family``: the command and the shape of its first key (digits elided)."""
    words = command.split()
    if not words:
        return "?"
    name = words[0].upper()
    key = ""
    if name in ("EVALSHA", "EVAL") and len(words) > 3:
        key = words[3]
    elif name == "XREADGROUP":
        upper = [w.upper() for w in words]
        key = words[upper.index("STREAMS") + 1] if "STREAMS" in upper else ""
    elif len(words) > 1:
        key = words[1]
    key = re.sub(r"\d+", "N", key)
    return f"{name} {key}".strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--bench-pid", type=int, required=True)
    parser.add_argument("--process", default="hubsync.mapper", help="the watched child's module")
    parser.add_argument("--after-child", default="py-spy", help="start counting once this child runs")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    while True:
        kids = children(args.bench_pid)
        if any(args.after_child in cmdline(k) for k in kids):
            break
        time.sleep(0.5)
    watched = next(k for k in kids if f"-m {args.process}" in cmdline(k))
    server = next(k for k in kids if "redis-server" in cmdline(k))
    port = int(cmdline(server).split()[1].rsplit(":", 1)[1])
    client = redis.Redis(port=port)
    ports = local_ports(watched)
    counts: Counter[str] = Counter()
    total = 0
    stop = time.monotonic() + args.seconds

    def refresh() -> None:
        nonlocal ports
        while time.monotonic() < stop:
            ports = local_ports(watched)
            time.sleep(0.5)

    threading.Thread(target=refresh, daemon=True).start()
    t0 = time.monotonic()
    with client.monitor() as m:
        for event in m.listen():
            if time.monotonic() >= stop:
                break
            total += 1
            if int(event.get("client_port") or 0) in ports:
                counts[family(event["command"])] += 1
    elapsed = time.monotonic() - t0
    turns = sum(n for k, n in counts.items() if k.startswith("ZADD hubsync:{ready:events:N}:pending"))
    watched_total = sum(counts.values())
    result = {
        "process": args.process,
        "seconds": round(elapsed, 1),
        "commands": watched_total,
        "commands_all_processes": total,
        "turns": turns,
        "commands_per_turn": round(watched_total / turns, 2) if turns else None,
        "by_command_per_turn": {k: round(n / max(turns, 1), 2) for k, n in counts.most_common()},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
