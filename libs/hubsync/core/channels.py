"""Client channels to the other services: tracing and caller credentials on every call."""

from __future__ import annotations

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from hubsync.core.callers import CallerCredentials, CallerStreamCredentials
from hubsync.core.settings import CoreSettings


def open_channel(address: str, token: str | None = None) -> grpc.aio.Channel:
    """An insecure loopback/cluster channel to ``address`` carrying ``token`` as credentials."""
    interceptors: list[grpc.aio.ClientInterceptor] = list(aio_client_interceptors())
    if token:
        interceptors += [CallerCredentials(token), CallerStreamCredentials(token)]
    return grpc.aio.insecure_channel(
        address,
        interceptors=interceptors,
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
    )


def channel_for(settings: CoreSettings, address: str) -> grpc.aio.Channel:
    """A channel presenting this service's own credential (``HUBSYNC_CALLER_NAME``)."""
    token = settings.caller_credentials().get(settings.caller_name) if settings.caller_name else None
    return open_channel(address, token)
