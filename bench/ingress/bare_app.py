"""The floor: a bare Starlette + uvicorn POST handler that reads the body and answers 200.

Same HTTP stack and uvicorn settings as ingress's ``HttpServer`` (httptools on uvloop, no access
log, no lifespan, no ``Server`` header, X-Forwarded-* not interpreted).
Run: ``python bench/ingress/bare_app.py <port>``.
"""

from __future__ import annotations

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def webhook(request: Request) -> Response:
    await request.body()
    return Response(b'{"accepted":1}', media_type="application/json")


app = Starlette(routes=[Route("/webhooks/hubspot", webhook, methods=["POST"])])

if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        lifespan="off",
        server_header=False,
        proxy_headers=False,
        timeout_keep_alive=30,
        backlog=2048,
    )
