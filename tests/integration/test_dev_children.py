"""A development suite killed with ``kill -9`` leaves no child behind holding its port.

``hubsync run`` and the tests start redis-server and the services as child processes; before
``die_with_parent`` a ``kill -9`` of the parent (or a lost Ctrl-C) left them running, holding
their ports and memory until someone found them with ``ps``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")

PARENT = textwrap.dedent(
    """
    import subprocess, sys, time
    from pathlib import Path
    from hubsync.core.devredis import RedisProcess, die_with_parent

    redis = RedisProcess(Path(sys.argv[1]), die_with_parent=sys.argv[2] == "1").start()
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"],
        preexec_fn=die_with_parent() if sys.argv[2] == "1" else None,
    )
    print(redis.proc.pid, child.pid, flush=True)
    time.sleep(600)
    """
)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone: it holds no port)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def orphans_after_kill(tmp_path: Path, die: bool) -> list[int]:
    """Starts the parent, kills it with SIGKILL, returns its children still running after a
    while (20 s at most when they should stop; 2 s for the control, which waits them out)."""
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path / "redis"), "1" if die else "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    pids = [int(p) for p in parent.stdout.readline().split()]
    assert len(pids) == 2 and all(alive(p) for p in pids)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + (20 if die else 2)
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    left = [p for p in pids if alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    return left


def test_children_stop_when_the_parent_is_killed(tmp_path: Path) -> None:
    assert orphans_after_kill(tmp_path, die=True) == []


def test_without_it_they_would_be_left(tmp_path: Path) -> None:
    """The control: the same children without ``die_with_parent`` outlive a kill -9."""
    assert len(orphans_after_kill(tmp_path, die=False)) == 2
