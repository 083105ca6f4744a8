"""Wires the ingress service: settings, verifier, committer, HTTP edge, journal servicer."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from redis.asyncio import Redis

from hubsync.api.ingress.v1 import ingress_pb2, ingress_pb2_grpc
from hubsync.core.channels import channel_for
from hubsync.core.service import ServiceSpec
from hubsync.core.settings import CoreSettings, Environment, invalid_configuration
from hubsync.ingress.committer import EventAppender, EventCommitter
from hubsync.ingress.http_protocol import EdgeLimits
from hubsync.ingress.http_server import HttpServer, build_app
from hubsync.ingress.journal import EventJournal
from hubsync.ingress.oauth_callback import OAuthCallback
from hubsync.ingress.reconciler import Reconciler
from hubsync.ingress.servicer import IngressServicer
from hubsync.ingress.settings import IngressSettings
from hubsync.ingress.verifier import WebhookVerifier
from hubsync.ingress.webhooks import WebhookEndpoint

__all__ = ["DEFAULT_PORT", "SERVICE", "IngressSpec", "build", "caller_policy", "check_settings"]

log = logging.getLogger(__name__)

SERVICE = ingress_pb2.DESCRIPTOR.services_by_name["IngressService"].full_name
DEFAULT_PORT = 50052


@dataclass
class IngressSpec(ServiceSpec):
    """The spec plus where the HTTP edge listens (tests read the port bound to 0)."""

    http_port: int = 0
    public_base_url: str = ""


def check_settings(settings: IngressSettings, environment: Environment) -> list[str]:
    """Return the active webhook secrets, once the settings are fit for ``environment``.

    Raises:
        SystemExit: Exit 2, after every problem is reported
            (:func:`hubsync.core.settings.invalid_configuration`): what production refuses
            (:meth:`IngressSettings.problems`), a secrets file that cannot be read, no secret in
            production.

    """
    problems = settings.problems(environment)
    secrets_file = IngressSettings.variable("webhook_secrets_file")
    try:
        secrets = settings.secrets()
    except (OSError, ValueError) as exc:
        problems.append((secrets_file, f"cannot be read ({type(exc).__name__})"))
        secrets = []
    else:
        if not secrets and environment == Environment.PRODUCTION:
            problems.append((secrets_file, "at least one webhook secret is required"))
    if problems:
        raise invalid_configuration(IngressSettings.__name__, problems)
    if not secrets:
        log.warning("no webhook secret configured: every webhook will be answered 401")
    if environment == Environment.PRODUCTION and (settings.accept_v1 or settings.accept_v2):
        log.warning("production accepts v1/v2 webhook signatures: a captured webhook can be replayed")
    return secrets


def caller_policy(settings: IngressSettings) -> dict[str, list[str]]:
    """Return who may call each IngressService method: every method is listed (deny by default).

    The journal holds every accepted event; only operators (the CLI) read and replay it.
    """
    admins = settings.admin_callers
    return {f"/{SERVICE}/{name}": admins for name in ("ReadJournal", "ReplayJournal", "Reconcile")}


async def build(core: CoreSettings, redis: Redis, settings: IngressSettings) -> IngressSpec:
    """Return the ingress service's :class:`ServiceSpec`, built from ``settings`` passed in.

    ``functools.partial(build, settings=…)`` is a ``hubsync.core.service.SpecFactory``
    (``__main__`` loads the settings from the environment; tests construct them).

    Raises:
        SystemExit: Exit 2 naming the variable, for settings that cannot work (see
            :func:`check_settings`) or an HTTP port that cannot be listened on.

    """
    secrets = check_settings(settings, core.environment)
    verifier = WebhookVerifier(secrets, accept_v1=settings.accept_v1, accept_v2=settings.accept_v2)
    appender = EventAppender(
        redis,
        retention_ms=settings.journal_retention_s * 1000,
        max_bytes=settings.journal_max_bytes,
        entry_format=settings.journal_format,
        dedupe_ttl_s=settings.dedupe_ttl_s,
        dedupe_buckets=settings.dedupe_buckets,
        ready_shards=core.ready_shards,
    )
    committer = EventCommitter(
        appender,
        timeout_s=settings.redis_timeout_s,
        window_s=settings.commit_window_s,
        max_events=settings.commit_max_events,
    )
    webhook = WebhookEndpoint(
        verifier,
        committer,
        max_body_bytes=settings.max_body_bytes,
        app_id=settings.app_id,
        spans=settings.webhook_spans,
    )
    auth_channel = channel_for(core, core.auth_address)
    writer_channel = channel_for(core, core.writer_address)

    async def redis_ok() -> bool:
        """Whether Redis answers a PING (``/healthz``)."""
        try:
            return bool(await redis.ping())
        except Exception:
            return False

    oauth = OAuthCallback(auth_channel)
    app = build_app(
        webhook,
        oauth.handle,
        oauth.start_page,
        oauth.start,
        redis_ok,
        server_spans=settings.http_server_spans,
    )
    limits = EdgeLimits(
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        max_header_bytes=settings.max_header_bytes,
    )
    http = HttpServer(
        app,
        settings.http_host,
        settings.http_port,
        core.shutdown_grace_seconds,
        limits=limits,
        max_connections=settings.max_connections,
    )
    try:
        port = await http.bind()
    except OSError as exc:
        problem = (IngressSettings.variable("http_port"), f"cannot listen ({exc.strerror})")
        raise invalid_configuration(IngressSettings.__name__, [problem]) from None
    webhook.public_base_url = settings.public_base_url or f"http://{settings.http_host}:{port}"
    # The OAuth browser-binding cookie is __Host-/Secure unless the edge is plain http.
    oauth.secure_cookie = webhook.public_base_url.startswith("https://")
    journal = EventJournal(
        redis,
        retention_ms=settings.journal_retention_s * 1000,
        replay_request_ttl_s=settings.replay_request_ttl_s,
        entry_format=settings.journal_format,
        ready_shards=core.ready_shards,
    )
    reconciler = Reconciler(
        redis,
        committer,
        writer_channel,
        object_types=settings.reconcile_object_types,
        lookback_s=settings.reconcile_lookback_s,
        interval_s=settings.reconcile_interval_seconds,
        settle_ms=settings.reconcile_settle_ms,
    )
    servicer = IngressServicer(journal, reconciler)

    async def close_channels() -> None:
        """Close the gRPC channels to auth and writer."""
        await auth_channel.close()
        await writer_channel.close()

    return IngressSpec(
        service_names=[SERVICE],
        register=lambda server: ingress_pb2_grpc.add_IngressServiceServicer_to_server(servicer, server),
        port=DEFAULT_PORT,
        policy=caller_policy(settings),
        background=[http.serve, reconciler.run],
        on_stop=[committer.close, close_channels],
        http_port=port,
        public_base_url=webhook.public_base_url,
    )
