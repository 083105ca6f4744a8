"""The whole suite in-process (auth, writer, mapper, ingress, the sandbox as HubSpot) on a
redis-server of its own, which a test may stop, kill and start again on the same port."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hubsync.api.auth.v1 import auth_pb2_grpc
from hubsync.api.ingress.v1 import ingress_pb2_grpc
from hubsync.api.mapper.v1 import mapper_pb2, mapper_pb2_grpc
from hubsync.api.writer.v1 import writer_pb2, writer_pb2_grpc
from hubsync.core.channels import open_channel
from hubsync.core.devredis import RedisProcess
from hubsync.core.service import RunningService
from hubsync.sandbox import DEFAULT_PRIVATE_TOKEN, PortalConfig, SandboxConfig, SandboxServer
from hubsync.sandbox.config import DEFAULT_CLIENT_SECRET
from tests.helpers.auth import (
    SANDBOX_PORTAL,
    register_sandbox_private_app,
    running_auth_service,
)
from tests.helpers.ingress import running_ingress_service
from tests.helpers.mapper import running_mapper
from tests.helpers.writer import running_writer_service

PORTAL = SANDBOX_PORTAL


class OwnRedis:
    """A redis-server child this test may stop (SIGTERM), kill (SIGKILL) and start again on the
    same port with the same data directory (AOF on, as in production)."""

    def __init__(self, data_dir: Path) -> None:
        self.process = RedisProcess(data_dir).start()
        self.port = self.process.port
        self.url = self.process.url
        self.data_dir = data_dir

    async def stop(self, how: str) -> None:
        proc = self.process.proc
        assert proc is not None
        if how == "sigkill":
            proc.kill()
            await asyncio.to_thread(proc.wait)
        self.process.stop()  # SIGTERM (or the bookkeeping after the kill)

    async def start(self, *, data_lost: bool = False) -> None:
        """Starts Redis again on the same port: with its data, or (``data_lost``) empty, as a Redis
        without persistence or a failover to a replica that had not caught up comes back."""
        if data_lost:
            self.data_dir = self.data_dir.with_name(self.data_dir.name + "-empty")
        self.process = RedisProcess(self.data_dir, port=self.port)
        await asyncio.to_thread(self.process.start)

    def close(self) -> None:
        self.process.stop()


@dataclass
class Stack:
    redis: OwnRedis
    sandbox: SandboxServer
    hubspot: httpx.AsyncClient
    services: dict[str, RunningService]
    http_base: str
    channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)
    auth_address: str = ""

    @property
    def mapper(self) -> mapper_pb2_grpc.MapperServiceStub:
        return mapper_pb2_grpc.MapperServiceStub(self.channels["mapper"])

    @property
    def writer(self) -> writer_pb2_grpc.WriterServiceStub:
        return writer_pb2_grpc.WriterServiceStub(self.channels["writer"])

    @property
    def auth(self) -> auth_pb2_grpc.AuthServiceStub:
        return auth_pb2_grpc.AuthServiceStub(self.channels["auth"])

    @property
    def ingress(self) -> ingress_pb2_grpc.IngressServiceStub:
        return ingress_pb2_grpc.IngressServiceStub(self.channels["ingress"])

    def health(self, name: str) -> health_pb2_grpc.HealthStub:
        return health_pb2_grpc.HealthStub(self.channels[name])

    async def create_contact(self, email: str) -> str:
        """A contact created in HubSpot's UI (its webhooks go to ingress)."""
        reply = await self.hubspot.post(
            f"/_sandbox/ui/contacts?portal={PORTAL}", json={"properties": {"email": email}}
        )
        assert reply.status_code in (200, 201), reply.text
        return str(reply.json()["id"])

    async def push(
        self, external_id: str, first_name: str, *, wait: bool = True
    ) -> mapper_pb2.PushRecordsResponse:
        fields = struct_pb2.Struct()
        fields.update({"email": f"{external_id}@example.com", "first_name": first_name})
        return await self.mapper.PushRecords(
            mapper_pb2.PushRecordsRequest(
                request_id=str(uuid.uuid4()),
                portal_id=PORTAL,
                wait=wait,
                records=[
                    mapper_pb2.ExternalRecord(object_type="contacts", external_id=external_id, fields=fields)
                ],
            ),
            timeout=30,
        )

    async def read(self, hs_ids: list[str]) -> writer_pb2.ReadRecordsResponse:
        return await self.writer.ReadRecords(
            writer_pb2.ReadRecordsRequest(
                portal_id=PORTAL, object_type="contacts", ids=hs_ids, properties=["email"]
            ),
            timeout=30,
        )

    async def quota(self) -> writer_pb2.GetQuotaStatusResponse:
        return await self.writer.GetQuotaStatus(
            writer_pb2.GetQuotaStatusRequest(portal_id=PORTAL), timeout=30
        )

    async def wait_all_serving(self, timeout: float = 60.0) -> None:
        """Until every service's health answers SERVING (after Redis came back)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        for name in self.services:
            while True:
                try:
                    reply = await self.health(name).Check(health_pb2.HealthCheckRequest(), timeout=5)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                assert loop.time() < until, f"{name} did not become SERVING again"
                await asyncio.sleep(0.1)


def _sandbox_config() -> SandboxConfig:
    return SandboxConfig.model_validate(
        {
            "portals": [PortalConfig(burst_per_10s=100_000, search_per_second=1_000)],
            "webhook_retry_scale": 0.00001,
            "webhook_retry_jitter": 0.0,
            "webhook_batch_window_ms": 2.0,
        }
    )


@contextlib.asynccontextmanager
async def running_stack(
    tmp_path: Path,
    caller_tokens: Mapping[str, str],
    *,
    ingress_settings: Mapping[str, object] | None = None,
    auth_env: Mapping[str, str] | None = None,
) -> AsyncIterator[Stack]:
    """Redis, the sandbox, auth (the sandbox's private app connected), writer, mapper (inbound on)
    and ingress (the sandbox's webhook target), all on loopback."""
    redis = OwnRedis(tmp_path / "redis")
    services: dict[str, RunningService] = {}
    try:
        async with contextlib.AsyncExitStack() as stack:
            sb = await stack.enter_async_context(SandboxServer(_sandbox_config()))
            hubspot = await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=sb.base_url,
                    headers={"Authorization": f"Bearer {DEFAULT_PRIVATE_TOKEN}"},
                    timeout=15,
                )
            )
            services["auth"] = await stack.enter_async_context(
                running_auth_service(
                    redis_url=redis.url,
                    caller_tokens=caller_tokens,
                    hubspot_api_base=sb.base_url,
                    env=auth_env,
                )
            )
            auth_address = f"127.0.0.1:{services['auth'].port}"
            await register_sandbox_private_app(auth_address, caller_tokens)
            services["writer"] = await stack.enter_async_context(
                running_writer_service(
                    redis_url=redis.url,
                    caller_tokens=caller_tokens,
                    hubspot_api_base=sb.base_url,
                    auth_address=auth_address,
                )
            )
            writer_address = f"127.0.0.1:{services['writer'].port}"
            mapper = await stack.enter_async_context(
                running_mapper(redis.url, caller_tokens, writer_address=writer_address)
            )
            services["mapper"] = mapper.service
            services["ingress"], spec = await stack.enter_async_context(
                running_ingress_service(
                    redis_url=redis.url,
                    caller_tokens=caller_tokens,
                    secrets=[DEFAULT_CLIENT_SECRET],
                    auth_address=auth_address,
                    writer_address=writer_address,
                    settings=ingress_settings,
                )
            )
            http_base = f"http://127.0.0.1:{spec.http_port}"
            await hubspot.put("/_sandbox/webhooks/1001", json={"target_url": f"{http_base}/webhooks/hubspot"})
            result = Stack(redis, sb, hubspot, services, http_base)
            # An operator reaches every RPC these tests call but the change feed, which is for clients.
            who = {"mapper": "client", "writer": "cli", "auth": "cli", "ingress": "cli"}
            for name, caller in who.items():
                result.channels[name] = await stack.enter_async_context(
                    open_channel(f"127.0.0.1:{services[name].port}", caller_tokens[caller])
                )
            result.auth_address = auth_address
            yield result
    finally:
        redis.close()


def retry_delay(err: grpc.aio.AioRpcError) -> float | None:
    """The RetryInfo delay of a failed call, in seconds, if it carries one."""
    from google.rpc import error_details_pb2, status_pb2

    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    info = error_details_pb2.RetryInfo()
                    detail.Unpack(info)
                    return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


def stacks_logged(records: list[logging.LogRecord]) -> list[str]:
    """ERROR records that carry a stack (what an outage must not produce per call or per loop)."""
    return [f"{r.name}: {r.getMessage()}" for r in records if r.levelno >= logging.ERROR and r.exc_info]
