"""Client channels to the other services: tracing and caller credentials on every call."""

from __future__ import annotations

import json
from typing import Any

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from hubsync.core.callers import CallerCredentials, CallerStreamCredentials, own_token
from hubsync.core.settings import CoreSettings
from hubsync.core.tls import (
    ReloadingChannel,
    TLSFiles,
    TLSMaterial,
    channel_credentials,
    channel_options,
    grpc_tls,
)

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


def open_channel(address: str, token: str | None = None, tls: TLSFiles | None = None) -> grpc.aio.Channel:
    """A channel to ``address`` carrying ``token`` as credentials: over (mutual) TLS with ``tls``
    (a new connection set when the files rotate), else plaintext (loopback, development)."""
    interceptors: list[grpc.aio.ClientInterceptor] = list(aio_client_interceptors())  # type: ignore[no-untyped-call]
    if token:
        interceptors += [CallerCredentials(token), CallerStreamCredentials(token)]
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.service_config", _SERVICE_CONFIG),
    ]
    if tls is None:
        return grpc.aio.insecure_channel(target(address), interceptors=interceptors, options=options)
    options += channel_options(tls)

    def secure(material: TLSMaterial) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(
            target(address), channel_credentials(material), interceptors=interceptors, options=options
        )

    return ReloadingChannel(secure, tls)


def channel_for(settings: CoreSettings, address: str) -> grpc.aio.Channel:
    """A channel presenting this service's own credential (``HUBSYNC_CALLER_NAME``) over the
    configured TLS (``HUBSYNC_TLS_*``)."""
    token = own_token(settings.caller_credentials(), settings.caller_name) if settings.caller_name else None
    return open_channel(address, token, grpc_tls(settings))
