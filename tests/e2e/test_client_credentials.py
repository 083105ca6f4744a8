"""``hubsync run`` lets a service of your own call the suite: it writes a client credentials file
(mode 0600) and prints a grpcurl call and a Python program that use it. The test runs ``hubsync run
--tls`` as a user does, then calls the running suite with what it wrote and printed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from hubsync.api.mapper.v1 import mapper_pb2, mapper_pb2_grpc
from hubsync.api.writer.v1 import writer_pb2, writer_pb2_grpc
from hubsync.cli.suite import SERVICES

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
READY = "The suite keeps running"


class RunningSuite:
    """``hubsync run --no-demo --tls`` in its own process; its output is collected as it comes."""

    def __init__(self, workdir: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HUBSYNC_", "OTEL_"))}
        env["COLUMNS"] = "250"
        self.workdir = workdir
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hubsync.cli", "run", "--no-demo", "--tls", "--workdir", str(workdir),
             *(["--redis-cluster"] if os.environ.get("HUBSYNC_TEST_REDIS") == "cluster" else [])],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self.ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if READY in line:
                self.ready.set()
        self.ready.set()  # the process ended: stop waiting

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(10)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSuite]:
    suite = RunningSuite(tmp_path_factory.mktemp("run"))
    try:
        suite.ready.wait(180)
        assert suite.proc.poll() is None and READY in suite.output, suite.output
        yield suite
    finally:
        suite.stop()
    # the run's tokens die with it, and so does the file
    assert suite.proc.returncode == 0, suite.output
    assert not (suite.workdir / "client-credentials.json").exists()


def credentials(running: RunningSuite) -> dict[str, Any]:
    path = running.workdir / "client-credentials.json"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_the_file_is_private_and_names_every_service(running: RunningSuite) -> None:
    path = running.workdir / "client-credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = credentials(running)
    assert data["caller"] == "client"
    assert set(data["addresses"]) == set(SERVICES)
    tls = data["tls"]
    assert isinstance(tls, dict) and all(Path(tls[k]).is_file() for k in ("ca", "cert", "key"))
    # the token itself is never printed, only where it is
    assert str(path) in running.output
    tokens = data["tokens"]
    assert isinstance(tokens, dict)
    assert all(token not in running.output for token in tokens.values())


def test_the_credentials_call_the_running_suite(running: RunningSuite) -> None:
    data = credentials(running)
    tls, addresses, tokens = data["tls"], data["addresses"], data["tokens"]
    assert isinstance(tls, dict) and isinstance(addresses, dict) and isinstance(tokens, dict)
    channel_creds = grpc.ssl_channel_credentials(
        root_certificates=Path(tls["ca"]).read_bytes(),
        private_key=Path(tls["key"]).read_bytes(),
        certificate_chain=Path(tls["cert"]).read_bytes(),
    )

    def call(service: str, caller: str) -> grpc.StatusCode:
        with grpc.secure_channel(addresses[service], channel_creds) as channel:
            try:
                if service == "mapper":
                    mapper_pb2_grpc.MapperServiceStub(channel).ListMappings(
                        mapper_pb2.ListMappingsRequest(),
                        metadata=[("authorization", f"Bearer {tokens[caller]}")],
                        timeout=30,
                    )
                else:
                    writer_pb2_grpc.WriterServiceStub(channel).GetQuotaStatus(
                        writer_pb2.GetQuotaStatusRequest(portal_id=12345),
                        metadata=[("authorization", f"Bearer {tokens[caller]}")],
                        timeout=30,
                    )
            except grpc.RpcError as exc:
                return exc.code()  # type: ignore[no-any-return,attr-defined]
        return grpc.StatusCode.OK

    assert call("mapper", "client") == grpc.StatusCode.OK
    # the cli token is an operator's: it reads a portal's quota, which a client may not
    assert call("writer", "cli") == grpc.StatusCode.OK
    assert call("writer", "client") == grpc.StatusCode.PERMISSION_DENIED


def printed_python(output: str) -> str:
    lines = output.splitlines()
    start = lines.index("import json")
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("print("))
    return "\n".join(lines[start : end + 1]) + "\n"


def test_the_printed_python_snippet_works(running: RunningSuite, tmp_path: Path) -> None:
    program = tmp_path / "call_suite.py"
    program.write_text(printed_python(running.output))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBSYNC_")}
    done = subprocess.run([sys.executable, str(program)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "contacts" in done.stdout  # the default mappings the suite loaded


def test_the_printed_grpcurl_call(running: RunningSuite) -> None:
    command = next(line for line in running.output.splitlines() if line.startswith("grpcurl "))
    assert "hubsync.api.mapper.v1.MapperService/ListMappings" in command
    assert "-cacert" in command and "-cert" in command and "-key" in command
    if not (shutil.which("grpcurl") and shutil.which("jq")):
        pytest.skip("grpcurl and jq are not installed: the printed command is checked, not run")
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "contacts" in done.stdout
