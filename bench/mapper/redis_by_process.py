"""The mapper's Redis commands per turn, counted while ``bench/tenants/fairness.py`` runs.

Runs ``fairness.py`` (its own arguments follow ``--count-seconds``) and, as its measured window
opens, ``MONITOR`` on its Redis for ``--count-seconds``, keeping the commands whose client address
is a socket of the mapper process (its TCP connections, from ``/proc``). The counts go into the
result as ``mapper_redis_commands``: per command and key family (digits elided), per turn. Turns
are counted by the ``ZADD`` of a portal to the ``events`` queue's pending set (one per turn of
:meth:`hubsync.core.ready.ReadyConsumer.take`). ``MONITOR`` costs Redis (every command is copied
to this client) and this process some CPU, not the mapper's.

Run: ``.venv/bin/python bench/mapper/redis_by_process.py --count-seconds 30 --rate 100
--out bench/tenants/results/fairness-1000-rate100-x.json``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import redis

_SOCKET = re.compile(r"socket:\[(\d+)\]")


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


def cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` (clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


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


def count(port: int, pid: int, seconds: float) -> dict[str, object]:
    """The commands process ``pid`` sends to the Redis on ``port`` over ``seconds`` (MONITOR)."""
    client = redis.Redis(port=port)
    ports = local_ports(pid)
    counts: Counter[str] = Counter()
    total = 0
    stop = time.monotonic() + seconds

    def refresh() -> None:
        nonlocal ports
        while time.monotonic() < stop:
            ports = local_ports(pid)
            time.sleep(0.5)

    threading.Thread(target=refresh, daemon=True).start()
    t0 = time.monotonic()
    ticks0 = cpu_ticks(pid)
    with client.monitor() as m:
        for event in m.listen():
            if time.monotonic() >= stop:
                break
            total += 1
            if int(event.get("client_port") or 0) in ports:
                counts[family(event["command"])] += 1
    elapsed = time.monotonic() - t0
    cpu_s = (cpu_ticks(pid) - ticks0) / os.sysconf("SC_CLK_TCK")
    client.close()
    turns = sum(n for k, n in counts.items() if k.startswith("ZADD hubsync:{ready:events:N}:pending"))
    watched = sum(counts.values())
    return {
        "seconds": round(elapsed, 1),
        "commands": watched,
        "commands_all_processes": total,
        "turns": turns,
        "commands_per_turn": round(watched / turns, 2) if turns else None,
        # The watched process's CPU over the same seconds (utime + stime), per turn.
        "cpu_percent_of_a_core": round(100 * cpu_s / elapsed, 1),
        "cpu_us_per_turn": round(1e6 * cpu_s / turns) if turns else None,
        "by_command_per_turn": {k: round(n / max(turns, 1), 2) for k, n in counts.most_common()},
    }


def main() -> None:
    """``fairness.py`` with the mapper's Redis commands counted over the first ``--count-seconds``
    of its window (arguments: ``--count-seconds S`` then fairness.py's own)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--count-seconds", type=float, default=30)
    args, rest = parser.parse_known_args()
    sys.argv = [sys.argv[0], *rest]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tenants"))
    import fairness  # type: ignore[import-not-found]

    counted: dict[str, object] = {}
    spy = fairness.start_py_spy

    def start(out: Path | None, pids: dict[str, int], seconds: float) -> list[subprocess.Popen[bytes]]:
        server = pids["redis"]
        # redis-server rewrites its title: "redis-server 127.0.0.1:<port>" (one argument or two)
        words = Path(f"/proc/{server}/cmdline").read_text().replace("\0", " ").split()
        port = int(next(w for w in words if ":" in w).rsplit(":", 1)[1])

        def run() -> None:
            counted.update(count(port, pids["mapper"], min(args.count_seconds, seconds)))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)
        return spy(out, pids, seconds)  # type: ignore[no-any-return]

    threads: list[threading.Thread] = []
    fairness.start_py_spy = start
    fairness.main()
    for thread in threads:
        thread.join()
    out = next((Path(rest[i + 1]) for i, a in enumerate(rest) if a == "--out"), None)
    if out is not None:
        result = json.loads(out.read_text())
        result["mapper_redis_commands"] = counted
        result["command"] += (
            f" (through bench/mapper/redis_by_process.py --count-seconds {args.count_seconds})"
        )
        out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(counted, indent=2))


if __name__ == "__main__":
    main()
