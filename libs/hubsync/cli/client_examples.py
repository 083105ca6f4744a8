"""The calls ``hubsync run`` prints so a service of your own can call the running suite: a
``grpcurl`` command line and a short Python program, both reading the client credentials file
(:meth:`hubsync.cli.suite.Suite.write_client_credentials`) instead of showing the token."""

from __future__ import annotations

import shlex
from pathlib import Path

# Any client may list the loaded mappings; it needs no connected portal.
_METHOD = "hubsync.api.mapper.v1.MapperService/ListMappings"


def grpcurl_command(credentials: Path, mapper_address: str, tls: dict[str, str] | None) -> str:
    """A ``grpcurl`` call of MapperService.ListMappings as the ``client`` caller (needs ``jq``;
    reflection is on in development)."""
    quoted = shlex.quote(str(credentials))
    if tls:
        flags = " ".join(f"-{flag} {shlex.quote(tls[key])}" for flag, key in (
            ("cacert", "ca"), ("cert", "cert"), ("key", "key")))  # fmt: skip
    else:
        flags = "-plaintext"
    return f'grpcurl {flags} -H "authorization: Bearer $(jq -r .token {quoted})" {mapper_address} {_METHOD}'


def python_snippet(credentials: Path) -> str:
    """A Python program that calls MapperService.ListMappings with the credentials file, over
    mutual TLS when the file names certificates."""
    return f"""import json
from pathlib import Path

import grpc
from hubsync.api.mapper.v1 import mapper_pb2, mapper_pb2_grpc

creds = json.loads(Path({str(credentials)!r}).read_text())
address = creds["addresses"]["mapper"]
if creds["tls"]:
    read = lambda key: Path(creds["tls"][key]).read_bytes()
    channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(
        root_certificates=read("ca"), private_key=read("key"), certificate_chain=read("cert")))
else:
    channel = grpc.insecure_channel(address)
stub = mapper_pb2_grpc.MapperServiceStub(channel)
reply = stub.ListMappings(mapper_pb2.ListMappingsRequest(),
                          metadata=[("authorization", f"Bearer {{creds['token']}}")], timeout=10)
print(sorted(m.object_type for m in reply.mappings))
"""
