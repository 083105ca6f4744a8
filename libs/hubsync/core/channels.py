"""Client channels to the other services: tracing and caller credentials on every call."""

from __future__ import annotations

import json

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from hubsync.core.callers import CallerCredentials, CallerStreamCredentials, own_token
from hubsync.core.settings import CoreSettings

# Calls spread over every address the name resolves to (in Kubernetes, a headless Service's pod
# IPs), not pinned to one pod for the life of the HTTP/2 connection; servers end connections
# after a while (``HUBSYNC_GRPC_MAX_CONNECTION_AGE_SECONDS``), so clients resolve again and find
# new pods after a scale-out.
_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def target(address: str) -> str:
    """``host:port`` → ``dns:///host:port`` (every A record, re-resolved on reconnect)."""
    return (
        address
        if "://" in address or address.startswith(("dns:", "unix:", "ipv4:", "ipv6:"))
        else f"dns:///{address}"
    )


def open_channel(address: str, token: str | None = None) -> grpc.aio.Channel:
    """An insecure loopback/cluster channel to ``address`` carrying ``token`` as credentials."""
    interceptors: list[grpc.aio.ClientInterceptor] = list(aio_client_interceptors())
    if token:
        interceptors += [CallerCredentials(token), CallerStreamCredentials(token)]
    return grpc.aio.insecure_channel(
        target(address),
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.service_config", _SERVICE_CONFIG),
        ],
    )


def channel_for(settings: CoreSettings, address: str) -> grpc.aio.Channel:
    """A channel presenting this service's own credential (``HUBSYNC_CALLER_NAME``)."""
    token = own_token(settings.caller_credentials(), settings.caller_name) if settings.caller_name else None
    return open_channel(address, token)
