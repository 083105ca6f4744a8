"""A real sentinel on loopback for the Sentinel tests: the tests' redis-server binary in sentinel
mode, monitoring a master at ``127.0.0.1:<master_port>`` (quorum 1)."""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

from redis import Redis as SyncRedis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from hubsync.core.devredis import free_port, redis_server_binary


class SentinelProcess:
    """A sentinel monitoring ``master_name`` at ``127.0.0.1:master_port``.

    With ``password`` the sentinel requires it from clients (``requirepass`` in sentinel.conf);
    ``master_password`` is what the sentinel sends the master (``sentinel auth-pass``).
    """

    def __init__(
        self,
        data_dir: Path,
        master_name: str,
        master_port: int,
        *,
        password: str | None = None,
        master_password: str | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.master_name = master_name
        self.master_port = master_port
        self.password = password
        self.master_password = master_password
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> SentinelProcess:
        """Starts the sentinel and waits until it names the master (at most ``timeout`` s)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {self.data_dir}",
            f"sentinel monitor {self.master_name} 127.0.0.1 {self.master_port} 1",
        ]
        if self.master_password:
            lines.append(f"sentinel auth-pass {self.master_name} {self.master_password}")
        if self.password:
            lines.append(f"requirepass {self.password}")
        conf = self.data_dir / "sentinel.conf"  # sentinel rewrites its own config: a writable file
        conf.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen(
            [redis_server_binary(), str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # No retries of its own (redis-py's default waits seconds between them): this loop polls.
        client = SyncRedis(
            port=self.port, password=self.password, socket_timeout=2.0, retry=Retry(NoBackoff(), 0)
        )
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"sentinel exited with {self.proc.returncode}")
                with contextlib.suppress(RedisError):
                    if client.sentinel_master(self.master_name):
                        return self
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        finally:
            client.close()
        self.stop()
        raise TimeoutError(f"sentinel on port {self.port} did not name {self.master_name!r}")

    def stop(self) -> None:
        """Stops the sentinel (SIGTERM, then SIGKILL)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
