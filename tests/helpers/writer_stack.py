"""A sandbox + auth + writer stack for the writer's integration tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import httpx
from redis.asyncio import Redis

from hubsync.api.writer.v1 import writer_pb2, writer_pb2_grpc
from hubsync.core.channels import open_channel
from hubsync.core.redis import portal_key
from hubsync.sandbox import DEFAULT_PRIVATE_TOKEN, PortalConfig, SandboxConfig, SandboxServer
from tests.helpers.auth import register_sandbox_private_app, running_auth
from tests.helpers.writer import WriterProcess, running_writer, writer_process

PORTAL = 12345
UPSERT_ROUTE = "POST /crm/v3/objects/{objectType}/batch/upsert"


def sandbox_config(portal: Mapping[str, Any] | None = None, **overrides: Any) -> SandboxConfig:
    base: dict[str, Any] = {
        "portals": [
            PortalConfig.model_validate(
                {"burst_per_10s": 100_000, "daily_limit": 100_000_000, **(portal or {})}
            )
        ],
        "webhook_retry_jitter": 0.0,
    }
    base.update(overrides)
    return SandboxConfig.model_validate(base)


@dataclass
class Stack:
    sb: SandboxServer
    admin: httpx.AsyncClient
    hubspot: httpx.AsyncClient
    auth_address: str
    writer_address: str
    stub: writer_pb2_grpc.WriterServiceStub
    cli: writer_pb2_grpc.WriterServiceStub
    redis_url: str
    caller_tokens: Mapping[str, str]

    def another_writer(self, env: Mapping[str, str] | None = None) -> AbstractAsyncContextManager[str]:
        """One more in-process writer on this stack's Redis, sandbox and auth; yields its address."""
        return running_writer(
            redis_url=self.redis_url,
            caller_tokens=self.caller_tokens,
            hubspot_api_base=self.sb.base_url,
            auth_address=self.auth_address,
            env=env,
        )

    def writer_process(
        self, env: Mapping[str, str] | None = None
    ) -> AbstractAsyncContextManager[WriterProcess]:
        """A writer as its own (killable) process on this stack's Redis, sandbox and auth."""
        return writer_process(
            redis_url=self.redis_url,
            caller_tokens=self.caller_tokens,
            hubspot_api_base=self.sb.base_url,
            auth_address=self.auth_address,
            env=env,
        )

    async def requests(self) -> dict[str, Any]:
        return (await self.admin.get("/_sandbox/requests", params={"limit": 1})).json()

    async def count(self, endpoint: str, status: int | None = None) -> int:
        log = await self.requests()
        if status is None:
            return int(log["counts"]["byEndpoint"].get(endpoint, 0))
        return int(log["counts"]["byEndpointAndStatus"].get(endpoint, {}).get(str(status), 0))

    async def fault(self, **rule: Any) -> None:
        r = await self.admin.post("/_sandbox/faults", json=rule)
        r.raise_for_status()

    async def objects(self, object_type: str = "contacts") -> list[dict[str, Any]]:
        r = await self.admin.get(f"/_sandbox/objects/{object_type}", params={"portal": PORTAL})
        r.raise_for_status()
        body = r.json()
        return body["results"] if isinstance(body, dict) else body


async def held_by_a_consumer(redis: Redis) -> None:
    """Waits until the write queue's one entry is pending: a writer holds it, its calls are out."""
    pending: dict[str, int] = {"pending": 0}
    for _ in range(200):
        pending = await redis.xpending(portal_key(PORTAL, "writes"), "writer")
        if pending["pending"] == 1:
            break
        await asyncio.sleep(0.05)
    assert pending["pending"] == 1


async def queue_length_once_drained(redis: Redis, tries: int = 200) -> int:
    """The write queue's length once it is empty, or after ``tries`` looks 50 ms apart."""
    for _ in range(tries):
        if await redis.xlen(portal_key(PORTAL, "writes")) == 0:
            break
        await asyncio.sleep(0.05)
    return int(await redis.xlen(portal_key(PORTAL, "writes")))


async def all_succeed(stub: writer_pb2_grpc.WriterServiceStub, tag: str, n: int, *, timeout: float) -> None:
    """``n`` concurrent waited submissions of 100 new contacts each (``<tag><k>-<i>@example.com``);
    asserts every write succeeded."""
    replies = await asyncio.gather(
        *(
            stub.SubmitWrites(
                writer_pb2.SubmitWritesRequest(
                    portal_id=PORTAL,
                    writes=[upsert(f"{tag}{k}-{i}@example.com") for i in range(100)],
                    wait=True,
                ),
                timeout=timeout,
            )
            for k in range(n)
        )
    )
    assert all(r.status == writer_pb2.WRITE_STATUS_SUCCEEDED for x in replies for r in x.results)


def upsert(email: str, **props: str) -> writer_pb2.Write:
    return writer_pb2.Write(
        record=writer_pb2.RecordWrite(
            operation=writer_pb2.WRITE_OPERATION_UPSERT,
            object_type="contacts",
            id=email,
            id_property="email",
            properties={"firstname": email.split("@")[0], **props},
        )
    )


def record(object_type: str, op: int, id: str = "", id_property: str = "", **props: str) -> writer_pb2.Write:
    return writer_pb2.Write(
        record=writer_pb2.RecordWrite(
            operation=op,  # type: ignore[arg-type]
            object_type=object_type,
            id=id,
            id_property=id_property,
            properties=props,
        )
    )


@contextlib.asynccontextmanager
async def stack(
    redis_url: str,
    caller_tokens: Mapping[str, str],
    config: SandboxConfig | None = None,
    writer_env: Mapping[str, str] | None = None,
) -> AsyncIterator[Stack]:
    async with (
        SandboxServer(config or sandbox_config()) as sb,
        httpx.AsyncClient(base_url=sb.base_url) as admin,
        httpx.AsyncClient(
            base_url=sb.base_url, headers={"Authorization": f"Bearer {DEFAULT_PRIVATE_TOKEN}"}
        ) as hubspot,
        running_auth(
            redis_url=redis_url, caller_tokens=caller_tokens, hubspot_api_base=sb.base_url
        ) as auth_address,
    ):
        await register_sandbox_private_app(auth_address, caller_tokens)
        async with (
            running_writer(
                redis_url=redis_url,
                caller_tokens=caller_tokens,
                hubspot_api_base=sb.base_url,
                auth_address=auth_address,
                env=writer_env,
            ) as address,
            open_channel(address, caller_tokens["mapper"]) as channel,
            open_channel(address, caller_tokens["cli"]) as cli_channel,
        ):
            yield Stack(
                sb,
                admin,
                hubspot,
                auth_address,
                address,
                writer_pb2_grpc.WriterServiceStub(channel),
                writer_pb2_grpc.WriterServiceStub(cli_channel),
                redis_url,
                caller_tokens,
            )
