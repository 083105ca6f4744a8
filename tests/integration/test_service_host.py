"""The shared gRPC host: health follows Redis, reflection answers, callers are authenticated
and authorized, and domain errors reach the client as rich statuses."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from google.protobuf import empty_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from redis.asyncio import Redis

from hubsync.api.auth.v1 import auth_pb2, auth_pb2_grpc
from hubsync.core.channels import open_channel
from hubsync.core.errors import FailedPrecondition, error_info
from hubsync.core.grpcserver import LIVENESS_SERVICE, ServiceHost, redis_probe
from hubsync.core.redis import redis_from_url
from hubsync.core.service import ServiceSpec, start_service
from hubsync.core.settings import CoreSettings

SERVICE = "hubsync.api.auth.v1.AuthService"
CALLERS = ["auth", "ingress", "mapper", "writer", "cli", "client"]
# Every method open to every caller but GetAccessToken, which only writer may call.
POLICY = {
    f"/{SERVICE}/{m.name}": CALLERS for m in auth_pb2.DESCRIPTOR.services_by_name["AuthService"].methods
} | {f"/{SERVICE}/GetAccessToken": ["writer"]}


class _Vault(auth_pb2_grpc.AuthServiceServicer):
    async def GetConnection(self, request, context):  # type: ignore[no-untyped-def]
        if request.portal_id == 0:
            raise FailedPrecondition("portal 0 needs re-authorization", reason="CONNECTION_NEEDS_REAUTH")
        return auth_pb2.GetConnectionResponse(connection=auth_pb2.Connection(portal_id=request.portal_id))

    async def GetAccessToken(self, request, context):  # type: ignore[no-untyped-def]
        return auth_pb2.GetAccessTokenResponse(access_token="t")


@pytest.fixture
async def host(redis_url: str, caller_tokens: dict[str, str]):  # type: ignore[no-untyped-def]
    redis = redis_from_url(redis_url)
    host = ServiceHost(
        "auth",
        [SERVICE],
        lambda server: auth_pb2_grpc.add_AuthServiceServicer_to_server(_Vault(), server),  # type: ignore[abstract]
        callers=caller_tokens,
        policy=POLICY,
        health_probe=redis_probe(redis),
        probe_interval=0.1,
    )
    port = await host.start("127.0.0.1:0")
    yield host, port
    await host.stop()
    await redis.aclose()


async def test_health_serving_and_reflection(host) -> None:  # type: ignore[no-untyped-def]
    _, port = host
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        names = []
        async for reply in stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        ):
            names = [s.name for s in reply.list_services_response.service]
        assert SERVICE in names


async def test_unauthenticated_and_forbidden(host, caller_tokens) -> None:  # type: ignore[no-untyped-def]
    _, port = host
    async with open_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await auth_pb2_grpc.AuthServiceStub(channel).GetConnection(
                auth_pb2.GetConnectionRequest(portal_id=1)
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with open_channel(f"127.0.0.1:{port}", "not-a-token") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await auth_pb2_grpc.AuthServiceStub(channel).GetConnection(
                auth_pb2.GetConnectionRequest(portal_id=1)
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with open_channel(f"127.0.0.1:{port}", caller_tokens["mapper"]) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        ok = await stub.GetConnection(auth_pb2.GetConnectionRequest(portal_id=7))
        assert ok.connection.portal_id == 7
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetAccessToken(auth_pb2.GetAccessTokenRequest(portal_id=7))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with open_channel(f"127.0.0.1:{port}", caller_tokens["writer"]) as channel:
        reply = await auth_pb2_grpc.AuthServiceStub(channel).GetAccessToken(
            auth_pb2.GetAccessTokenRequest(portal_id=7)
        )
        assert reply.access_token == "t"


async def test_domain_error_carries_error_info(host, caller_tokens) -> None:  # type: ignore[no-untyped-def]
    _, port = host
    async with open_channel(f"127.0.0.1:{port}", caller_tokens["writer"]) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await auth_pb2_grpc.AuthServiceStub(channel).GetConnection(
                auth_pb2.GetConnectionRequest(portal_id=0)
            )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(err.value)
    assert info is not None and info.reason == "CONNECTION_NEEDS_REAUTH" and info.domain == "hubsync.dev"


async def test_health_follows_redis(redis_process, caller_tokens) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from hubsync.core.devredis import RedisProcess

    own = RedisProcess(redis_process.data_dir / "own").start()
    client = Redis.from_url(own.url, socket_connect_timeout=0.2, socket_timeout=0.2)
    host = ServiceHost(
        "t",
        [SERVICE],
        lambda s: None,
        callers=caller_tokens,
        health_probe=redis_probe(client),
        probe_interval=0.1,
    )
    port = await host.start("127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert (
                await health.Check(health_pb2.HealthCheckRequest())
            ).status == health_pb2.HealthCheckResponse.SERVING
            own.stop()
            status = None
            for _ in range(50):
                await asyncio.sleep(0.1)
                status = (await health.Check(health_pb2.HealthCheckRequest())).status
                if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            # ...while the liveness service stays SERVING: an outage must not restart the pods
            live = await health.Check(health_pb2.HealthCheckRequest(service=LIVENESS_SERVICE))
            assert live.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await host.stop()
        await client.aclose()
        own.stop()
    _ = empty_pb2


class _Counting(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, name: str, seen: list[str]) -> None:
        self.name = name
        self.seen = seen

    async def GetConnection(self, request, context):  # type: ignore[no-untyped-def]
        self.seen.append(self.name)
        return auth_pb2.GetConnectionResponse(connection=auth_pb2.Connection(portal_id=request.portal_id))


async def test_calls_spread_over_every_replica(caller_tokens: dict[str, str]) -> None:
    """A name with several addresses (a headless Service's pods) gets calls round-robin, not
    all on the first connection."""
    seen: list[str] = []
    hosts = []
    for name in ("a", "b"):
        servicer = _Counting(name, seen)  # type: ignore[abstract]
        hosts.append(
            ServiceHost(
                name,
                [SERVICE],
                lambda server, s=servicer: auth_pb2_grpc.add_AuthServiceServicer_to_server(s, server),  # type: ignore[misc]
                callers=caller_tokens,
                policy=POLICY,
                max_connection_age_s=60,
            )
        )
    ports = [await h.start("127.0.0.1:0") for h in hosts]
    try:
        address = "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)
        async with open_channel(address, caller_tokens["cli"]) as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            for i in range(20):
                await stub.GetConnection(auth_pb2.GetConnectionRequest(portal_id=i + 1), timeout=5)
        assert seen.count("a") >= 5 and seen.count("b") >= 5, seen
    finally:
        for h in hosts:
            await h.stop()


async def test_a_pod_may_hold_only_digests_of_other_callers(caller_tokens: dict[str, str]) -> None:
    """auth's pod knows writer and mapper only as sha256 digests: it still tells them apart and
    applies the policy, and holds no credential it could present as them."""
    from hubsync.core.callers import hashed, own_token

    credentials = {"auth": caller_tokens["auth"]} | {
        name: hashed(caller_tokens[name]) for name in ("writer", "mapper")
    }
    assert (
        own_token(credentials, "writer") is None and own_token(credentials, "auth") == caller_tokens["auth"]
    )
    host = ServiceHost(
        "auth",
        [SERVICE],
        lambda server: auth_pb2_grpc.add_AuthServiceServicer_to_server(_Vault(), server),  # type: ignore[abstract]
        callers=credentials,
        policy=POLICY,
    )
    port = await host.start("127.0.0.1:0")
    try:
        async with open_channel(f"127.0.0.1:{port}", caller_tokens["writer"]) as channel:
            reply = await auth_pb2_grpc.AuthServiceStub(channel).GetAccessToken(
                auth_pb2.GetAccessTokenRequest(portal_id=7)
            )
            assert reply.access_token == "t"
        async with open_channel(f"127.0.0.1:{port}", caller_tokens["mapper"]) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await auth_pb2_grpc.AuthServiceStub(channel).GetAccessToken(
                    auth_pb2.GetAccessTokenRequest(portal_id=7)
                )
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # the digest itself is not a credential
        async with open_channel(f"127.0.0.1:{port}", credentials["writer"]) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await auth_pb2_grpc.AuthServiceStub(channel).GetConnection(
                    auth_pb2.GetConnectionRequest(portal_id=7)
                )
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await host.stop()


def _core(redis_url: str, caller_tokens: dict[str, str]) -> CoreSettings:
    return CoreSettings(redis_url=redis_url, caller_tokens=json.dumps(caller_tokens))  # type: ignore[arg-type]


async def test_stop_ends_a_background_task_whose_cancellation_was_lost(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    # A loop that retries on errors, inside which one cancellation is lost (as Python 3.11's
    # asyncio.timeout can lose one inside a client library): stop cancels again until it ends.
    lost = 0

    async def worker() -> None:
        nonlocal lost
        while True:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                if lost:
                    raise
                lost += 1
                task = asyncio.current_task()
                assert task is not None
                task.uncancel()

    async def factory(core: CoreSettings, redis: Redis) -> ServiceSpec:
        return ServiceSpec(service_names=[], register=lambda server: None, port=0, background=[worker])

    service = await start_service("test", _core(redis_url, caller_tokens), factory, port=0)
    # Waited for without cancelling it: a cancelled stop would cancel the task itself.
    stopping = asyncio.create_task(service.stop())
    done, _ = await asyncio.wait({stopping}, timeout=10)
    if not done:
        for task in (stopping, *service.tasks):
            task.cancel()
        pytest.fail("stop() did not end a task whose first cancellation was lost")
    assert lost == 1
    assert all(task.done() for task in service.tasks)


async def test_stop_gives_up_on_a_task_that_never_ends(
    redis_url: str,
    caller_tokens: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import hubsync.core.service as service_module

    monkeypatch.setattr(service_module, "STOP_TASKS_TIMEOUT_S", 1.5)

    released = asyncio.Event()

    async def stubborn() -> None:
        # ignores every cancellation until the test releases it
        while not released.is_set():
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                assert task is not None
                task.uncancel()

    async def factory(core: CoreSettings, redis: Redis) -> ServiceSpec:
        return ServiceSpec(service_names=[], register=lambda server: None, port=0, background=[stubborn])

    service = await start_service("test", _core(redis_url, caller_tokens), factory, port=0)
    stopping = asyncio.create_task(service.stop())
    done, _ = await asyncio.wait({stopping}, timeout=10)
    leftover = service.tasks[0]
    try:
        # stop returned, said which task it left, and the task is still running
        assert done, "stop() waited forever for a task that never ends"
        assert not leftover.done()
        assert any("did not stop" in r.getMessage() for r in caplog.records)
    finally:
        released.set()
        stopping.cancel()
        await asyncio.wait({leftover, stopping}, timeout=5)


async def test_health_watch_streams_the_status(host) -> None:  # type: ignore[no-untyped-def]
    """grpc.health.v1 Watch (a handler that writes with context.write) passes the interceptors."""
    _, port = host
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE))
        first = await asyncio.wait_for(call.read(), 10)
        call.cancel()
    assert first.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_background_task_that_fails_is_started_again(
    redis_url: str, caller_tokens: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A worker that dies of an error its loop did not expect (as ingress's reconciler did when
    Redis was down at the start of a pass) is started again; it does not stay dead."""
    runs = 0
    again = asyncio.Event()

    async def worker() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("unexpected")
        again.set()
        await asyncio.Event().wait()

    async def factory(core: CoreSettings, redis: Redis) -> ServiceSpec:
        return ServiceSpec(service_names=[], register=lambda server: None, port=0, background=[worker])

    service = await start_service("test", _core(redis_url, caller_tokens), factory, port=0)
    try:
        await asyncio.wait_for(again.wait(), 30)
    finally:
        await service.stop()
    assert runs == 2
    assert any("starting it again" in r.getMessage() for r in caplog.records)
