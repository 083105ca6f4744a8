"""The Starlette application: HubSpot's API routes plus the ``/_sandbox/`` admin API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from . import account, admin, associations, crm, oauth, pipelines, properties_api, schemas
from .config import SandboxConfig
from .errors import error_body
from .routing import json_response
from .state import SandboxState


async def _not_found(request: Request, exc: Exception) -> Response:
    return json_response(
        404, error_body(f"Unknown endpoint {request.method} {request.url.path}", "NOT_FOUND")
    )


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    return json_response(
        405, error_body(f"{request.method} is not allowed on {request.url.path}", "METHOD_NOT_ALLOWED")
    )


def create_app(config: SandboxConfig | None = None, state: SandboxState | None = None) -> Starlette:
    """Builds the sandbox app. ``app.state.sandbox`` is the ``SandboxState`` tests inspect."""
    if state is None:
        state = SandboxState(config or SandboxConfig())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await state.webhooks.close()

    # Starlette tries routes in order: the CRM object routes (the hot path) go first.
    routes: list[BaseRoute] = [
        *crm.routes(state),
        *associations.routes(state),
        *properties_api.routes(state),
        *schemas.routes(state),
        *pipelines.routes(state),
        *account.routes(state),
        *oauth.routes(state),
        *admin.routes(state),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: _not_found, 405: _method_not_allowed},
    )
    app.state.sandbox = state
    return app
