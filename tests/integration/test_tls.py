"""gRPC over mutual TLS with certificates from files, against a real server on loopback.

A client with a certificate from the suite's CA is served; one without a certificate, with one
from another CA, or in plaintext is refused at the handshake. Rotated files are used by the next
handshake without a restart, on the server and on a client channel.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hubsync.core.channels import open_channel
from hubsync.core.devcerts import DevCA, IssuedFiles
from hubsync.core.grpcserver import ServiceHost
from hubsync.core.tls import ReloadingChannel, TLSFiles, server_credentials

SERVING = health_pb2.HealthCheckResponse.SERVING


def _tls(files: IssuedFiles) -> TLSFiles:
    return TLSFiles(cert=files.cert, key=files.key, ca=files.ca)


async def _check(channel: grpc.aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    return int(reply.status)


async def _refused(channel: grpc.aio.Channel) -> None:
    """The server refuses the channel's connection: its calls fail UNAVAILABLE."""
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _check(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.fixture
def ca() -> DevCA:
    return DevCA()


@pytest.fixture
async def server(tmp_path: Path, ca: DevCA) -> AsyncIterator[tuple[ServiceHost, IssuedFiles]]:
    files = ca.write(tmp_path / "server", "server")
    # Health is open to all; a caller is configured only because a host refuses to serve without one.
    host = ServiceHost("tls-test", [], lambda _server: None, callers={"client": "t" * 32}, probe_interval=0.2)
    await host.start("127.0.0.1:0", credentials=server_credentials(_tls(files)), health_address="127.0.0.1:0")
    yield host, files
    await host.stop()


async def test_client_with_a_certificate_of_the_ca_is_served(
    server: tuple[ServiceHost, IssuedFiles], ca: DevCA, tmp_path: Path
) -> None:
    host, _ = server
    client = ca.write(tmp_path / "client", "client")
    async with open_channel(f"127.0.0.1:{host.port}", tls=_tls(client)) as channel:
        assert await _check(channel) == SERVING


async def test_health_port_answers_in_plaintext_and_serves_nothing_else(
    server: tuple[ServiceHost, IssuedFiles],
) -> None:
    host, _ = server
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.health_port}") as channel:
        assert await _check(channel) == SERVING
        reflection = channel.unary_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in reflection(b"", timeout=10):
                pass
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_client_without_a_certificate_is_refused(
    server: tuple[ServiceHost, IssuedFiles], ca: DevCA
) -> None:
    host, _ = server
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem)
    async with grpc.aio.secure_channel(f"127.0.0.1:{host.port}", credentials) as channel:
        await _refused(channel)


async def test_client_with_a_certificate_of_another_ca_is_refused(
    server: tuple[ServiceHost, IssuedFiles], ca: DevCA, tmp_path: Path
) -> None:
    host, _ = server
    intruder = DevCA("another CA").write(tmp_path / "intruder", "intruder")
    # It trusts the real CA, so the server's certificate passes; its own does not.
    intruder.ca.write_bytes(ca.cert_pem)
    async with open_channel(f"127.0.0.1:{host.port}", tls=_tls(intruder)) as channel:
        await _refused(channel)


async def test_plaintext_client_is_refused(server: tuple[ServiceHost, IssuedFiles]) -> None:
    host, _ = server
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        await _refused(channel)


async def test_rotated_files_are_used_without_a_restart(
    server: tuple[ServiceHost, IssuedFiles], ca: DevCA, tmp_path: Path
) -> None:
    """The server's files and a client's files are replaced by ones from a new CA (the harshest
    rotation: nothing of the old trust is left); both sides pick them up while running."""
    host, server_files = server
    address = f"127.0.0.1:{host.port}"
    client_files = ca.write(tmp_path / "client", "client")
    channel = open_channel(address, tls=_tls(client_files))
    assert isinstance(channel, ReloadingChannel)
    try:
        assert await _check(channel) == SERVING

        new_ca = DevCA("rotated CA")
        rotated = new_ca.write(tmp_path / "rotated", "server")
        for name in ("cert", "key", "ca"):
            getattr(server_files, name).write_bytes(getattr(rotated, name).read_bytes())
        # A client of the new CA is served by the next handshake: the server reloaded its files.
        async with open_channel(address, tls=_tls(new_ca.write(tmp_path / "new-client", "c"))) as fresh:
            assert await _check(fresh) == SERVING
        # The old client's new connections now fail (old CA) until its own files rotate.
        async with open_channel(address, tls=_tls(client_files)) as stale:
            with pytest.raises(grpc.aio.AioRpcError):
                await _check(stale)
        renewed = new_ca.write(tmp_path / "renewed", "client")
        for name in ("cert", "key", "ca"):
            getattr(client_files, name).write_bytes(getattr(renewed, name).read_bytes())
        channel.reload_now()
        assert await _check(channel) == SERVING
    finally:
        await channel.close()


async def test_half_written_rotation_keeps_the_previous_certificate(
    server: tuple[ServiceHost, IssuedFiles], ca: DevCA, tmp_path: Path
) -> None:
    host, server_files = server
    # The certificate is replaced, its key not yet: the pair does not match.
    other_cert, _ = ca.issue("server")
    server_files.cert.write_bytes(other_cert)
    async with open_channel(
        f"127.0.0.1:{host.port}", tls=_tls(ca.write(tmp_path / "c", "client"))
    ) as channel:
        assert await _check(channel) == SERVING
