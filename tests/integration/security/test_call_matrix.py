"""Every method of every service, called with no token, a wrong token and each caller's token,
against the four real services: each answer matches the policy table of docs/security.md."""

from __future__ import annotations

import asyncio
import re
import secrets
from pathlib import Path

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from hubsync.api.auth.v1 import auth_pb2
from hubsync.api.ingress.v1 import ingress_pb2
from hubsync.api.mapper.v1 import config_pb2, mapper_pb2
from hubsync.api.writer.v1 import writer_pb2
from tests.helpers.security_stack import running_services

DOC = Path(__file__).resolve().parents[3] / "docs" / "security.md"
# Each process and the gRPC services it serves.
SERVICES: dict[str, list[ServiceDescriptor]] = {
    "auth": [auth_pb2.DESCRIPTOR.services_by_name["AuthService"]],
    "ingress": [ingress_pb2.DESCRIPTOR.services_by_name["IngressService"]],
    "mapper": [
        mapper_pb2.DESCRIPTOR.services_by_name["MapperService"],
        config_pb2.DESCRIPTOR.services_by_name["ConfigService"],
    ],
    "writer": [writer_pb2.DESCRIPTOR.services_by_name["WriterService"]],
}
REFUSED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
NO_TOKEN, WRONG_TOKEN = "(no token)", "(wrong token)"


def documented_policy() -> dict[tuple[str, str], set[str]]:
    """``{(service, method): callers}`` from the table in docs/security.md."""
    policy = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] in SERVICES:
            method = cells[1].strip("`")
            policy[(cells[0], method)] = set(re.findall(r"`([^`]+)`", cells[2]))
    return policy


async def _call(channel: grpc.aio.Channel, service: str, method: MethodDescriptor, token: str | None) -> str:
    """The status of one call with an empty request: "OK" or the code's name."""
    request = message_factory.GetMessageClass(method.input_type)()
    path = f"/{method.containing_service.full_name}/{method.name}"
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
    try:
        if method.server_streaming:
            call = channel.unary_stream(path, request_serializer=type(request).SerializeToString)
            async for _ in call(request, metadata=metadata, timeout=30):
                break
        else:
            stub = channel.unary_unary(path, request_serializer=type(request).SerializeToString)
            await stub(request, metadata=metadata, timeout=30)
    except grpc.aio.AioRpcError as exc:
        return str(exc.code().name)
    return "OK"


def test_the_table_names_every_method_of_every_service() -> None:
    served = {(s, m.name) for s, ds in SERVICES.items() for d in ds for m in d.methods}
    assert set(documented_policy()) == served


async def test_call_matrix(
    redis_url: str, caller_tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = documented_policy()
    identities: dict[str, str | None] = {NO_TOKEN: None, WRONG_TOKEN: secrets.token_urlsafe(32)}
    identities |= caller_tokens
    wrong: list[str] = []
    async with running_services(redis_url, caller_tokens, monkeypatch) as addresses:
        for service, descriptors in SERVICES.items():
            async with grpc.aio.insecure_channel(addresses[service]) as channel:
                for method in (m for d in descriptors for m in d.methods):
                    allowed = policy[(service, method.name)]
                    names = list(identities)
                    got = await asyncio.gather(
                        *(_call(channel, service, method, identities[n]) for n in names)
                    )
                    for name, status in zip(names, got, strict=True):
                        if name in (NO_TOKEN, WRONG_TOKEN):
                            ok = status == "UNAUTHENTICATED"
                        elif name in allowed:
                            ok = status not in {c.name for c in REFUSED}
                        else:
                            ok = status == "PERMISSION_DENIED"
                        if not ok:
                            wrong.append(
                                f"{service}.{method.name} as {name}: {status} (allowed: {sorted(allowed)})"
                            )
    assert not wrong, "answers that disagree with docs/security.md:\n" + "\n".join(wrong)
