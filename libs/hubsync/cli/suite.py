"""Runs the whole suite as separate processes on one machine: Redis, the sandbox, four services.

What ``hubsync run`` and the end-to-end tests start. Every process gets its configuration through
environment variables, exactly as in a container; logs go to ``<workdir>/logs/<name>.log``.
Credentials (caller tokens, the encryption key ring) are generated per run and never printed;
the ``client`` and ``cli`` callers' tokens go to ``<workdir>/client-credentials.json`` (mode 0600)
with the services' addresses, so a service of your own can call the suite
(:meth:`Suite.write_client_credentials`).

With ``traces=True`` (``hubsync run``'s default) a collector process
(:mod:`hubsync.cli.trace_collector`) receives every service's spans over OTLP and keeps them in
``<workdir>/traces.sqlite3``, where ``hubsync trace`` finds them: traces without a backend.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hubsync.cli.trace_store import STORE_FILE
from hubsync.core.channels import open_channel
from hubsync.core.devcerts import DevCA
from hubsync.core.devredis import RedisCluster, RedisProcess, die_with_parent, free_port
from hubsync.core.tls import TLSFiles

SERVICES = ("auth", "writer", "mapper", "ingress")
# ``client`` is the caller the services' policies grant to internal services by default (the one
# handed out in the client credentials file); ``demo-client`` is the demo's own.
CALLERS = ("auth", "ingress", "mapper", "writer", "cli", "client", "demo-client")
CREDENTIALS_FILE = "client-credentials.json"
SANDBOX_PORTAL = 12345
SANDBOX_APP_ID = 1001
SANDBOX_PRIVATE_APP_ID = 2001  # the sandbox's default private app in every portal
SANDBOX_CLIENT_ID = "hubsync-sandbox-client-id"
SANDBOX_CLIENT_SECRET = "hubsync-sandbox-client-secret"
SANDBOX_PRIVATE_TOKEN = "pat-na1-00000000-0000-4000-8000-000000012345"

Progress = Callable[[str], None]


@dataclass
class Ports:
    """Loopback ports of every process (0 = pick a free one)."""

    redis: int = 0
    sandbox: int = 0
    auth: int = 0
    ingress: int = 0
    ingress_http: int = 0
    mapper: int = 0
    writer: int = 0
    traces: int = 0  # the local trace collector (OTLP/gRPC)
    metrics: dict[str, int] = field(default_factory=dict)

    def resolve(self) -> Ports:
        """Picks a free loopback port for every port left at 0; returns self."""
        for name in ("redis", "sandbox", "auth", "ingress", "ingress_http", "mapper", "writer", "traces"):
            if not getattr(self, name):
                setattr(self, name, free_port())
        for service in SERVICES:
            self.metrics.setdefault(service, free_port())
        return self


class SuiteError(RuntimeError):
    """A process of the suite did not start; the message says which and where its log is."""


class Suite:
    """Starts and stops the suite. Use ``async with Suite(workdir) as suite:``."""

    def __init__(
        self,
        workdir: Path,
        *,
        ports: Ports | None = None,
        otlp_endpoint: str | None = None,
        sandbox_config: dict[str, object] | None = None,
        extra_env: dict[str, dict[str, str]] | None = None,
        progress: Progress | None = None,
        tls: bool = False,
        traces: bool = False,
        redis_cluster: bool = False,
    ) -> None:
        self.workdir = workdir
        self.traces = traces
        # A local Redis Cluster (three masters, ports of their own) instead of one redis-server.
        self.redis_cluster = redis_cluster
        self.ports = (ports or Ports()).resolve()
        self.otlp_endpoint = otlp_endpoint
        self.sandbox_config = sandbox_config or {}
        self.extra_env = extra_env or {}
        self.progress = progress or (lambda _msg: None)
        self.tokens = {name: secrets.token_urlsafe(24) for name in CALLERS}
        self.keyring = {
            "active": "k1",
            "keys": {"k1": base64.b64encode(secrets.token_bytes(32)).decode()},
        }
        # With tls, every gRPC hop is mutual TLS with certificates of a CA made for this run.
        self.tls: dict[str, TLSFiles] = {}
        if tls:
            ca = DevCA("hubsync run CA")
            for name in (*SERVICES, "cli", "client"):
                issued = ca.write(workdir / "tls", name)
                self.tls[name] = TLSFiles(cert=issued.cert, key=issued.key, ca=issued.ca)
        self.redis: RedisProcess | RedisCluster | None = None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        # gRPC ports of replicas started by add_replica, by name ("writer-2").
        self.replica_ports: dict[str, int] = {}
        self._logs: dict[str, IO[bytes]] = {}

    # --- addresses -------------------------------------------------------------------------

    @property
    def sandbox_url(self) -> str:
        """The sandbox's base URL (HubSpot for the suite)."""
        return f"http://127.0.0.1:{self.ports.sandbox}"

    @property
    def ingress_url(self) -> str:
        """The base URL of ingress's HTTP server (webhooks, OAuth callback)."""
        return f"http://127.0.0.1:{self.ports.ingress_http}"

    def address(self, service: str) -> str:
        """``host:port`` of ``service``'s gRPC server (or of a replica, ``writer-2``)."""
        if service in self.replica_ports:
            return f"127.0.0.1:{self.replica_ports[service]}"
        return f"127.0.0.1:{getattr(self.ports, service)}"

    def channel(self, service: str, caller: str = "cli") -> grpc.aio.Channel:
        """A channel to ``service`` presenting ``caller``'s credential."""
        return open_channel(self.address(service), self.tokens[caller], self.tls.get("cli"))

    def health_channel(self, service: str) -> grpc.aio.Channel:
        """A channel without a caller token (grpc.health.v1 needs none), over TLS when it is on."""
        return open_channel(self.address(service), None, self.tls.get("cli"))

    async def add_replica(self, service: str) -> str:
        """Start one more replica of ``service`` (its own gRPC and metrics ports, the same Redis
        and settings, as a Deployment's second pod); return its name (``writer-2``, ...).

        The other services keep calling the first replica; callers reach this one through
        :meth:`channel` with its name.
        """
        n = 2 + sum(1 for name in self.replica_ports if name.startswith(f"{service}-"))
        name = f"{service}-{n}"
        self.replica_ports[name] = free_port()
        self.ports.metrics[name] = free_port()
        env = self.env_for(service) | {
            "HUBSYNC_GRPC_PORT": str(self.replica_ports[name]),
            "HUBSYNC_METRICS_PORT": str(self.ports.metrics[name]),
        }
        self._spawn(name, [sys.executable, "-m", f"hubsync.{service}"], env)
        await self._wait_serving(name)
        return name

    @property
    def trace_store_path(self) -> Path:
        """The SQLite file the suite's trace collector writes."""
        return self.workdir / STORE_FILE

    def log_path(self, name: str) -> Path:
        """The log file of the process ``name``."""
        return self.workdir / "logs" / f"{name}.log"

    # --- life cycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Suite:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Starts Redis, the sandbox, the trace collector and the four services, each waited for."""
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        if self.redis_cluster:
            self.progress("starting a local Redis Cluster")
            self.redis = RedisCluster(self.workdir / "redis-cluster", die_with_parent=True)
        else:
            self.progress("starting redis-server")
            self.redis = RedisProcess(self.workdir / "redis", self.ports.redis, die_with_parent=True)
        await asyncio.to_thread(self.redis.start)
        if self.traces:
            self.progress("starting the local trace collector")
            self._spawn("traces", self._collector_command(), {})
            await self._wait_collector()
        self.progress("starting the HubSpot sandbox")
        self._spawn("sandbox", self._sandbox_command(), {})
        await self._wait_http("sandbox", f"{self.sandbox_url}/_sandbox/requests")
        for service in SERVICES:
            self.progress(f"starting {service}")
            self._spawn(service, [sys.executable, "-m", f"hubsync.{service}"], self.env_for(service))
        for service in SERVICES:
            await self._wait_serving(service)
            self.progress(f"{service} is SERVING")
        await self._wait_http("ingress", f"{self.ingress_url}/healthz")
        self.write_client_credentials()

    @property
    def credentials_path(self) -> Path:
        """Where :meth:`write_client_credentials` writes the client's credentials."""
        return self.workdir / CREDENTIALS_FILE

    def write_client_credentials(self) -> Path:
        """Writes what a client outside the suite needs to call it: the ``client`` caller's token
        (the one the policies grant internal services; ``cli``'s too, for operator calls), every
        service's address and, with TLS, the CA and a client certificate of the run's CA.

        The file is created with mode 0600 before any secret is written to it, and removed when
        the suite stops.
        """
        files = self.tls.get("client")
        data = {
            "caller": "client",
            "token": self.tokens["client"],
            "tokens": {"client": self.tokens["client"], "cli": self.tokens["cli"]},
            "addresses": {service: self.address(service) for service in SERVICES},
            "ingress_http": self.ingress_url,
            "tls": {"ca": str(files.ca), "cert": str(files.cert), "key": str(files.key)} if files else None,
        }
        path = self.credentials_path
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            os.fchmod(out.fileno(), 0o600)  # whatever the umask
            json.dump(data, out, indent=2)
        return path

    def _sandbox_command(self) -> list[str]:
        config = {
            "apps": [
                {
                    "app_id": SANDBOX_APP_ID,
                    "client_id": SANDBOX_CLIENT_ID,
                    "client_secret": SANDBOX_CLIENT_SECRET,
                    "webhooks": {"target_url": f"{self.ingress_url}/webhooks/hubspot"},
                }
            ],
            **self.sandbox_config,
        }
        path = self.workdir / "sandbox.json"
        path.write_text(json.dumps(config, indent=2))
        return [
            sys.executable, "-m", "hubsync.sandbox",
            "--host", "127.0.0.1", "--port", str(self.ports.sandbox), "--config", str(path),
        ]  # fmt: skip

    def _collector_command(self) -> list[str]:
        return [
            sys.executable, "-m", "hubsync.cli.trace_collector",
            "--db", str(self.trace_store_path), "--port", str(self.ports.traces),
        ]  # fmt: skip

    async def _wait_collector(self, timeout: float = 60.0) -> None:
        """Until the collector answers an (empty) OTLP export."""
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        deadline = time.monotonic() + timeout
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.ports.traces}") as channel:
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)  # type: ignore[no-untyped-call]
            while True:
                self._check_alive("traces")
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await stub.Export(trace_service_pb2.ExportTraceServiceRequest(), timeout=1.0)
                    return
                if time.monotonic() > deadline:
                    raise SuiteError(f"trace collector not answering after {timeout:.0f} s")
                await asyncio.sleep(0.1)

    def env_for(self, service: str) -> dict[str, str]:
        """The environment of one service process, as a Deployment would set it."""
        assert self.redis is not None
        env = {
            "HUBSYNC_ENVIRONMENT": "development",
            "HUBSYNC_REDIS_URL": self.redis.url,
            "HUBSYNC_CALLER_NAME": service,
            "HUBSYNC_CALLER_TOKENS": json.dumps(self.tokens),
            "HUBSYNC_GRPC_PORT": str(getattr(self.ports, service)),
            "HUBSYNC_METRICS_PORT": str(self.ports.metrics[service]),
            "HUBSYNC_HUBSPOT_API_BASE": self.sandbox_url,
            "HUBSYNC_SHUTDOWN_GRACE_SECONDS": "3",
            **{f"HUBSYNC_{name.upper()}_ADDRESS": self.address(name) for name in SERVICES},
            "OTEL_SERVICE_NAME": f"hubsync-{service}",
        }
        if service in self.tls:
            files = self.tls[service]
            env |= {
                "HUBSYNC_TLS_CERT_FILE": str(files.cert),
                "HUBSYNC_TLS_KEY_FILE": str(files.key),
                "HUBSYNC_TLS_CA_FILE": str(files.ca),
            }
        if self.otlp_endpoint:
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.otlp_endpoint
            env["OTEL_EXPORTER_OTLP_INSECURE"] = "true"
            env["OTEL_BSP_SCHEDULE_DELAY"] = "200"
            env["OTEL_METRIC_EXPORT_INTERVAL"] = "2000"
        if self.traces:
            # Spans only (metrics stay on /metrics): the collector speaks OTLP's TraceService.
            env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = f"http://127.0.0.1:{self.ports.traces}"
            env["OTEL_EXPORTER_OTLP_TRACES_INSECURE"] = "true"
            env["OTEL_BSP_SCHEDULE_DELAY"] = "200"
        if service == "auth":
            env |= {
                "HUBSYNC_AUTH_CLIENT_ID": SANDBOX_CLIENT_ID,
                "HUBSYNC_AUTH_CLIENT_SECRET": SANDBOX_CLIENT_SECRET,
                "HUBSYNC_AUTH_KEYRING": json.dumps(self.keyring),
                "HUBSYNC_AUTH_AUTHORIZE_URL": f"{self.sandbox_url}/oauth/authorize",
                "HUBSYNC_AUTH_REDIRECT_URI": f"{self.ingress_url}/oauth/callback",
            }
        elif service == "ingress":
            env |= {
                "HUBSYNC_INGRESS_HTTP_PORT": str(self.ports.ingress_http),
                "HUBSYNC_INGRESS_PUBLIC_BASE_URL": self.ingress_url,
                "HUBSYNC_INGRESS_WEBHOOK_SECRETS": json.dumps([SANDBOX_CLIENT_SECRET]),
                # the sandbox's public app, and the private app whose token the suite connects with
                "HUBSYNC_INGRESS_APP_ID": f"{SANDBOX_APP_ID},{SANDBOX_PRIVATE_APP_ID}",
            }
        elif service == "mapper":
            # The demo plays an internal service: it pushes records and reads the change feed.
            env["HUBSYNC_MAPPER_CLIENT_CALLERS"] = json.dumps(["demo-client", "client"])
        return env | self.extra_env.get(service, {})

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log = self.log_path(name).open("ab")
        self._logs[name] = log
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("HUBSYNC_", "OTEL_"))}
        full_env |= env
        # Spawned from the event loop's thread; none outlives the suite's process (kill -9 too).
        self.procs[name] = subprocess.Popen(
            argv,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent(),
        )

    def _check_alive(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is not None:
            tail = self.log_path(name).read_text(errors="replace")[-2000:]
            raise SuiteError(f"{name} exited with code {proc.returncode}; log {self.log_path(name)}:\n{tail}")

    async def _wait_serving(self, service: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        async with self.health_channel(service) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                self._check_alive(service)
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                if time.monotonic() > deadline:
                    raise SuiteError(
                        f"{service} not SERVING after {timeout:.0f} s; log {self.log_path(service)}"
                    )
                await asyncio.sleep(0.1)

    async def _wait_http(self, name: str, url: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=1.0) as client:
            while True:
                self._check_alive(name)
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(url)).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise SuiteError(f"{name} not answering {url} after {timeout:.0f} s")
                await asyncio.sleep(0.1)

    async def health(self) -> dict[str, str]:
        """grpc.health.v1 status of every service."""
        out = {}
        for service in SERVICES:
            async with self.health_channel(service) as channel:
                try:
                    reply = await health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=2.0
                    )
                    out[service] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                except grpc.aio.AioRpcError as exc:
                    out[service] = f"UNREACHABLE ({exc.code().name})"
        return out

    async def _reap(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        """Waits for a signalled process (killed after 15 s) and closes its log."""
        try:
            await asyncio.to_thread(proc.wait, 15)
        except subprocess.TimeoutExpired:
            print(f"hubsync: {name} did not stop within 15 s of SIGTERM; killed", file=sys.stderr)
            proc.kill()
            await asyncio.to_thread(proc.wait)
        self._logs[name].close()

    async def stop(self) -> None:
        """SIGTERM every service (graceful drain), then the sandbox, the trace collector (once
        the services flushed their last spans to it) and Redis."""
        replicas = sorted(self.replica_ports, reverse=True)
        for name in [*replicas, *reversed(SERVICES), "sandbox"]:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        # Waited for together (each killed after 15 s), so a slow machine's stop takes 15 s at
        # most, not 15 s per process; the trace collector last, once their spans are flushed.
        others = [(n, p) for n, p in self.procs.items() if n != "traces"]
        await asyncio.gather(*(self._reap(n, p) for n, p in others))
        if "traces" in self.procs:
            proc = self.procs["traces"]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            await self._reap("traces", proc)
        self.procs.clear()
        if self.redis is not None:
            await asyncio.to_thread(self.redis.stop)
            self.redis = None
        # the run's tokens die with it: leave no credential of theirs behind
        self.credentials_path.unlink(missing_ok=True)
