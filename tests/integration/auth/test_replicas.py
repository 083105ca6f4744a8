"""Exactly one refresh per portal across replicas: 50 concurrent calls over 3 auth processes."""

from __future__ import annotations

import asyncio
import time
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx
from google.protobuf import duration_pb2

from hubsync.api.auth.v1 import auth_pb2, auth_pb2_grpc
from hubsync.core.channels import open_channel
from hubsync.core.devredis import free_port
from hubsync.sandbox import SandboxServer
from tests.helpers.auth import SANDBOX_PORTAL, auth_env
from tests.helpers.auth_oauth import connect_oauth, sandbox_tokens
from tests.helpers.auth_processes import auth_processes
from tests.helpers.auth_sandbox import sandbox_config, sandbox_requests, token_calls


def replicas(
    sandbox: SandboxServer,
    env: dict[str, str],
    metrics_ports: list[int],
    redis_url: str,
    caller_tokens: dict[str, str],
    log_dir: Path,
) -> AbstractAsyncContextManager[list[str]]:
    """One auth process on ``sandbox`` per metrics port (logs in ``log_dir``): their addresses."""
    return auth_processes(
        len(metrics_ports),
        redis_url=redis_url,
        caller_tokens=caller_tokens,
        hubspot_api_base=sandbox.base_url,
        auth_env=env,
        log_dir=log_dir,
        metrics_ports=metrics_ports,
    )


async def test_fifty_calls_over_three_processes_refresh_once(
    redis_url: str, caller_tokens: dict[str, str], tmp_path: Path
) -> None:
    async with SandboxServer(sandbox_config()) as sandbox:
        env = auth_env(sandbox.base_url)
        metrics_ports = [free_port() for _ in range(3)]
        async with replicas(sandbox, env, metrics_ports, redis_url, caller_tokens, tmp_path) as addresses:
            conn = await connect_oauth(addresses[0], caller_tokens)
            # Measured from when the token exists: connecting can take seconds on a loaded machine.
            connected_at = time.monotonic()
            assert conn.state == auth_pb2.CONNECTION_STATE_ACTIVE
            assert token_calls(await sandbox_requests(sandbox.base_url)) == 1
            # Tokens live 1800 s. Asking for 1797 s of life once 6 s have passed makes the stored
            # token "expiring" for every caller, while the refreshed one satisfies callers for
            # 3 s after its refresh (room for 50 calls on a slow machine).
            await asyncio.sleep(max(0.0, 6.0 - (time.monotonic() - connected_at)))
            request = auth_pb2.GetAccessTokenRequest(
                portal_id=SANDBOX_PORTAL, min_ttl=duration_pb2.Duration(seconds=1797)
            )
            channels = [open_channel(a, caller_tokens["writer"]) for a in addresses]
            try:
                stubs = [auth_pb2_grpc.AuthServiceStub(c) for c in channels]
                replies = await asyncio.gather(
                    *(stubs[i % 3].GetAccessToken(request, timeout=30) for i in range(50))
                )
            finally:
                for c in channels:
                    await c.close()
            refreshes = 0.0
            async with httpx.AsyncClient() as client:
                for port in metrics_ports:
                    text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
                    refreshes += sum(
                        float(line.rsplit(" ", 1)[1])
                        for line in text.splitlines()
                        if line.startswith("hubsync_token_refresh_total{") and 'outcome="success"' in line
                    )
        log = await sandbox_requests(sandbox.base_url)
    tokens = {r.access_token for r in replies}
    assert len(tokens) == 1, f"{len(tokens)} different tokens handed out"
    # The witness: the sandbox saw the code exchange and exactly one refresh.
    assert token_calls(log) == 2, log["counts"]
    logs = "".join((tmp_path / f"auth-{i}.log").read_text() for i in range(3))
    assert logs.count('"audit_event":"refreshed"') == 1
    assert refreshes == 1  # and the metric agrees


async def test_needing_reauth_gauge_counts_dead_connections(
    redis_url: str, caller_tokens: dict[str, str], tmp_path: Path
) -> None:
    async with SandboxServer(sandbox_config(token_ttl_s=3)) as sandbox:
        env = auth_env(sandbox.base_url) | {
            "HUBSYNC_AUTH_REFRESH_MARGIN_S": "1",
            "HUBSYNC_AUTH_REFRESHER_INTERVAL_S": "0.3",
        }
        port = free_port()
        async with replicas(sandbox, env, [port], redis_url, caller_tokens, tmp_path) as (address,):
            await connect_oauth(address, caller_tokens)
            refresh = (await sandbox_tokens(sandbox.base_url))["refreshTokens"][0]["token"]
            async with httpx.AsyncClient() as client:
                await client.post(
                    f"{sandbox.base_url}/_sandbox/tokens/revoke", json={"refresh_token": refresh}
                )
                gauge = None
                for _ in range(60):
                    await asyncio.sleep(0.1)
                    text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
                    values = [
                        float(line.rsplit(" ", 1)[1])
                        for line in text.splitlines()
                        if line.startswith("hubsync_connections_needing_reauth")
                    ]
                    gauge = values[0] if values else None
                    if gauge == 1:
                        break
    assert gauge == 1
