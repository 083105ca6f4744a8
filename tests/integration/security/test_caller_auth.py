"""Serving gRPC is never open by default, every handler kind is checked, refusals are logged
without token material, and reflection is opt-in in production."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from redis.asyncio import Redis

from hubsync.api.auth.v1 import auth_pb2, auth_pb2_grpc
from hubsync.core.callers import CallerAuthInterceptor, CallerRegistry, current_caller, hashed
from hubsync.core.channels import open_channel
from hubsync.core.devredis import free_port
from hubsync.core.grpcserver import ServiceHost
from hubsync.core.service import ServiceSpec, start_service
from hubsync.core.settings import CoreSettings, Environment
from tests.helpers.security_stack import ENV, NOWHERE, build_auth, core_settings

AUTH = "hubsync.api.auth.v1.AuthService"
AUTH_METHODS = [m.name for m in auth_pb2.DESCRIPTOR.services_by_name["AuthService"].methods]
PROBE = "hubsync.test.v1.ProbeService"
# Spelled out rather than imported, so that this module also runs against code without them.
INSECURE_OPT_IN = "HUBSYNC_INSECURE_NO_CALLER_AUTH"


async def test_auth_with_only_a_redis_url_refuses_to_start(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: it served, and an unauthenticated CreatePrivateAppConnection then GetAccessToken
    returned the stored token."""
    for key in os.environ:
        if key.startswith("HUBSYNC_"):
            monkeypatch.delenv(key)
    core = CoreSettings(redis_url=redis_url, hubspot_api_base=f"http://{NOWHERE}")
    try:
        service = await start_service("auth", core, build_auth, port=0)
    except SystemExit as exc:
        assert exc.code == 2
        err = capsys.readouterr().err
        assert "HUBSYNC_CALLER_TOKENS_FILE" in err and INSECURE_OPT_IN in err
        return
    try:
        async with open_channel(f"127.0.0.1:{service.port}") as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            await stub.CreatePrivateAppConnection(
                auth_pb2.CreatePrivateAppConnectionRequest(portal_id=7, tenant="t", access_token="pat-secret")
            )
            stolen = (await stub.GetAccessToken(auth_pb2.GetAccessTokenRequest(portal_id=7))).access_token
    finally:
        await service.stop()
    pytest.fail(f"auth served without caller credentials; an anonymous caller read token {stolen!r}")


def test_the_process_exits_2_naming_the_variables(redis_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUBSYNC_", "OTEL_"))}
    env |= {
        "HUBSYNC_REDIS_URL": redis_url,
        "HUBSYNC_GRPC_PORT": str(free_port()),
        "HUBSYNC_HUBSPOT_API_BASE": f"http://{NOWHERE}",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubsync.auth"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("auth kept running without caller credentials")
    assert proc.returncode == 2, err
    assert "HUBSYNC_CALLER_TOKENS_FILE" in err and INSECURE_OPT_IN in err


async def test_the_insecure_opt_in_serves_anonymously_and_says_so(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    core = core_settings(redis_url, {}, "auth", insecure_no_caller_auth=True)
    caplog.set_level(logging.WARNING)
    service = await start_service("auth", core, build_auth, port=0)
    try:
        assert any("WITHOUT CALLER AUTHENTICATION" in r.getMessage() for r in caplog.records)
        async with open_channel(f"127.0.0.1:{service.port}") as channel:
            reply = await auth_pb2_grpc.AuthServiceStub(channel).ListConnections(
                auth_pb2.ListConnectionsRequest()
            )
        assert list(reply.connections) == []
        assert any("UNAUTHENTICATED CALL SERVED" in r.getMessage() for r in caplog.records)
    finally:
        await service.stop()


@pytest.mark.parametrize(
    ("values", "variable"),
    [
        ({"tokens": {}, "insecure_no_caller_auth": True}, INSECURE_OPT_IN),
        ({"insecure_no_caller_auth": True}, INSECURE_OPT_IN),
        ({"tokens": {"cli": "short"}}, "HUBSYNC_CALLER_TOKENS_FILE"),
    ],
    ids=["opt-in-without-tokens", "opt-in-with-tokens", "short-token"],
)
async def test_production_refuses(
    redis_url: str,
    caller_tokens: dict[str, str],
    values: dict[str, object],
    variable: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    values = dict(values)
    tokens = values.pop("tokens", caller_tokens)
    core = core_settings(redis_url, tokens, "test", environment=Environment.PRODUCTION, **values)  # type: ignore[arg-type]
    try:
        service = await start_service("test", core, _empty_spec, port=0)
    except SystemExit as exc:
        assert exc.code == 2
        err = capsys.readouterr().err
        assert variable in err and "short" not in err.replace("shorter", "")
        return
    await service.stop()
    pytest.fail("production served with an insecure caller configuration")


async def test_production_accepts_long_tokens_and_digests(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    credentials = {"cli": "c" * 32, "writer": hashed("w")}
    core = core_settings(redis_url, credentials, "test", environment=Environment.PRODUCTION)
    service = await start_service("test", core, _empty_spec, port=0)
    await service.stop()


async def _empty_spec(core: CoreSettings, redis: Redis) -> ServiceSpec:
    return ServiceSpec(service_names=[], register=lambda server: None, port=0)


async def _reflection_names(port: int) -> list[str] | str:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        try:
            async for reply in stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            ):
                return [s.name for s in reply.list_services_response.service]
        except grpc.aio.AioRpcError as exc:
            return str(exc.code().name)
    return []


@pytest.mark.parametrize(
    ("environment", "reflection", "served"),
    [
        (Environment.DEVELOPMENT, None, True),
        (Environment.PRODUCTION, None, False),
        (Environment.PRODUCTION, True, True),
        (Environment.DEVELOPMENT, False, False),
    ],
)
async def test_reflection_is_opt_in_in_production(
    redis_url: str,
    caller_tokens: dict[str, str],
    environment: Environment,
    reflection: bool | None,
    served: bool,
) -> None:
    core = core_settings(
        redis_url, caller_tokens, "test", environment=environment, grpc_reflection=reflection
    )
    service = await start_service("test", core, _empty_spec, port=0)
    try:
        names = await _reflection_names(service.port)
    finally:
        await service.stop()
    if served:
        assert isinstance(names, list) and "grpc.health.v1.Health" in names
    else:
        assert names == "UNIMPLEMENTED"


async def test_a_host_without_credentials_or_opt_in_does_not_start() -> None:
    with pytest.raises(ValueError, match="unauthenticated"):
        ServiceHost("t", [], lambda server: None, callers={})


class _Vault(auth_pb2_grpc.AuthServiceServicer):
    async def RotateKeys(self, request, context):  # type: ignore[no-untyped-def]
        return auth_pb2.RotateKeysResponse()


def _register_auth(server: grpc.aio.Server) -> None:
    auth_pb2_grpc.add_AuthServiceServicer_to_server(_Vault(), server)  # type: ignore[abstract]


async def test_a_servicer_method_missing_from_the_policy_stops_the_start(
    caller_tokens: dict[str, str],
) -> None:
    policy = {f"/{AUTH}/{m}": ["cli"] for m in AUTH_METHODS if m != "RotateKeys"}
    with pytest.raises(ValueError, match="RotateKeys: served but names no allowed callers"):
        ServiceHost("auth", [AUTH], _register_auth, callers=caller_tokens, policy=policy)
    # ...and so does a rule for a method nothing serves (a typo would hide a wrong rule)
    policy = {f"/{AUTH}/{m}": ["cli"] for m in AUTH_METHODS} | {f"/{AUTH}/RotateKey": ["cli"]}
    with pytest.raises(ValueError, match="RotateKey: in the policy but not served"):
        ServiceHost("auth", [AUTH], _register_auth, callers=caller_tokens, policy=policy)


async def test_a_service_whose_policy_misses_a_method_exits_2(
    redis_url: str, caller_tokens: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    closed: list[str] = []

    async def factory(core: CoreSettings, redis: Redis) -> ServiceSpec:
        async def close() -> None:
            closed.append("on_stop")

        policy = {f"/{AUTH}/{m}": ["cli"] for m in AUTH_METHODS if m != "RotateKeys"}
        return ServiceSpec([AUTH], _register_auth, 0, policy=policy, on_stop=[close])

    core = core_settings(redis_url, caller_tokens, "auth")
    try:
        service = await start_service("auth", core, factory, port=0)
    except SystemExit as exc:
        assert exc.code == 2
        assert "RotateKeys: served but names no allowed callers" in capsys.readouterr().err
        assert closed == ["on_stop"]  # what the spec holds is released
        return
    await service.stop()
    pytest.fail("a service served a method its policy does not name")


@pytest.fixture
async def bare_server(caller_tokens: dict[str, str]) -> AsyncIterator[tuple[int, CallerAuthInterceptor]]:
    """A grpc.aio server with only the interceptor (no start-up policy check), serving AuthService
    and a policy that forgets RotateKeys; refusals logged once an hour."""
    policy = {f"/{AUTH}/{m}": ["cli"] for m in AUTH_METHODS if m != "RotateKeys"}
    interceptor = CallerAuthInterceptor(CallerRegistry(caller_tokens), policy, log_interval_s=3600)
    server = grpc.aio.server(interceptors=[interceptor])
    _register_auth(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield port, interceptor
    await server.stop(0)


async def test_a_method_without_a_rule_is_refused(bare_server, caller_tokens) -> None:  # type: ignore[no-untyped-def]
    port, _ = bare_server
    for caller in caller_tokens:
        async with open_channel(f"127.0.0.1:{port}", caller_tokens[caller]) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await auth_pb2_grpc.AuthServiceStub(channel).RotateKeys(auth_pb2.RotateKeysRequest())
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, caller


async def test_refusals_are_logged_once_without_token_material(  # type: ignore[no-untyped-def]
    bare_server, caller_tokens, caplog: pytest.LogCaptureFixture
) -> None:
    port, _ = bare_server
    caplog.set_level(logging.WARNING, logger="hubsync.core.callers")
    wrong = "wrong-" + caller_tokens["cli"][::-1]
    for token in [wrong] * 10 + [caller_tokens["mapper"]] * 3:
        async with open_channel(f"127.0.0.1:{port}", token) as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await auth_pb2_grpc.AuthServiceStub(channel).ListConnections(
                    auth_pb2.ListConnectionsRequest()
                )
    refused = [r for r in caplog.records if r.getMessage().startswith("call refused")]
    assert [(r.status, r.caller) for r in refused] == [  # type: ignore[attr-defined]
        ("UNAUTHENTICATED", None),
        ("PERMISSION_DENIED", "mapper"),
    ]
    assert all(r.method == f"/{AUTH}/ListConnections" and r.peer for r in refused)  # type: ignore[attr-defined]
    secrets_seen = [wrong, hashed(wrong)[7:], *caller_tokens.values()]
    for record in caplog.records:
        text = repr(record.__dict__)
        assert not any(s in text for s in secrets_seen)


def _probe_handlers(seen: list[str]) -> dict[str, grpc.RpcMethodHandler]:
    async def collect(requests, context):  # type: ignore[no-untyped-def]
        seen.append(current_caller.get())
        return b"".join([r async for r in requests])

    async def chat(requests, context):  # type: ignore[no-untyped-def]
        seen.append(current_caller.get())
        async for r in requests:
            yield r

    return {
        "Collect": grpc.stream_unary_rpc_method_handler(collect),
        "Chat": grpc.stream_stream_rpc_method_handler(chat),
    }


async def test_client_and_bidi_streaming_methods_are_checked(caller_tokens: dict[str, str]) -> None:
    """Before: the interceptor passed both kinds on unchecked, to anyone."""
    seen: list[str] = []
    handlers = _probe_handlers(seen)

    def register(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(PROBE, handlers),))
        server.add_registered_method_handlers(PROBE, handlers)  # type: ignore[attr-defined]

    host = ServiceHost(
        "probe",
        [PROBE],
        register,
        callers=caller_tokens,
        policy={f"/{PROBE}/Collect": ["cli"], f"/{PROBE}/Chat": ["cli"]},
    )
    port = await host.start("127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            collect = channel.stream_unary(f"/{PROBE}/Collect")
            chat = channel.stream_stream(f"/{PROBE}/Chat")

            async def both(token: str | None) -> tuple[str, str]:
                metadata = (("authorization", f"Bearer {token}"),) if token else ()
                codes = []
                try:
                    await collect(iter([b"a", b"b"]), metadata=metadata, timeout=30)
                    codes.append("OK")
                except grpc.aio.AioRpcError as exc:
                    codes.append(exc.code().name)
                try:
                    async for _ in chat(iter([b"a"]), metadata=metadata, timeout=30):
                        pass
                    codes.append("OK")
                except grpc.aio.AioRpcError as exc:
                    codes.append(exc.code().name)
                return codes[0], codes[1]

            assert await both(None) == ("UNAUTHENTICATED", "UNAUTHENTICATED")
            assert await both("not-a-token") == ("UNAUTHENTICATED", "UNAUTHENTICATED")
            assert await both(caller_tokens["mapper"]) == ("PERMISSION_DENIED", "PERMISSION_DENIED")
            assert seen == []
            assert await both(caller_tokens["cli"]) == ("OK", "OK")
            assert seen == ["cli", "cli"]
    finally:
        await host.stop()
