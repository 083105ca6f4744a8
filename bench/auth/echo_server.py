"""A gRPC echo server: the floor the auth benchmark is compared with.

``plain``: a bare grpc.aio server. ``hosted``: the same echo inside hubsync's ServiceHost (tracing,
caller authentication and error-mapping interceptors, health, reflection) with the caller tokens
of ``HUBSYNC_CALLER_TOKENS`` — the cost of the shared host without any auth-service work.
Prints its port on stdout, then serves until killed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import grpc

from hubsync.core.grpcserver import ServiceHost, run_until_signalled


def _handlers() -> dict[str, grpc.RpcMethodHandler]:
    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    return {"Echo": grpc.unary_unary_rpc_method_handler(echo)}


def _handler() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler("bench.Echo", _handlers())


def _register(server: grpc.aio.Server) -> None:
    # As generated code does: the host checks its policy against the registered methods.
    server.add_generic_rpc_handlers((_handler(),))
    server.add_registered_method_handlers("bench.Echo", _handlers())  # type: ignore[attr-defined]


async def main(mode: str) -> None:
    if mode == "hosted":
        host = ServiceHost(
            "echo",
            ["bench.Echo"],
            _register,
            callers=json.loads(os.environ["HUBSYNC_CALLER_TOKENS"]),
            policy={"/bench.Echo/Echo": ["writer"]},
            grace_seconds=0,
        )
        port = await host.start("127.0.0.1:0")
        print(port, flush=True)
        await run_until_signalled(host.stop)
        return
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((_handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "plain"))
