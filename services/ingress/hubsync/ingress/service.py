"""Wires the ingress service: settings, verifier, committer, HTTP edge, journal servicer."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from redis.asyncio import Redis

from hubsync.api.ingress.v1 import ingress_pb2, ingress_pb2_grpc
from hubsync.core.channels import channel_for
from hubsync.core.service import ServiceSpec
from hubsync.core.settings import CoreSettings, Environment, load_settings
from hubsync.ingress.committer import EventCommitter
from hubsync.ingress.http_protocol import EdgeLimits
from hubsync.ingress.http_server import HttpServer, build_app
from hubsync.ingress.journal import EventJournal
from hubsync.ingress.oauth_callback import OAuthCallback
from hubsync.ingress.reconciler import Reconciler
from hubsync.ingress.servicer import IngressServicer
from hubsync.ingress.settings import IngressSettings
from hubsync.ingress.verifier import WebhookVerifier
from hubsync.ingress.webhooks import WebhookEndpoint

log = logging.getLogger(__name__)

SERVICE = ingress_pb2.DESCRIPTOR.services_by_name["IngressService"].full_name
DEFAULT_PORT = 50052


@dataclass
class IngressSpec(ServiceSpec):
    """The spec plus where the HTTP edge listens (tests read the port bound to 0)."""

    http_port: int = 0
    public_base_url: str = ""


def _exit(variable: str, message: str) -> SystemExit:
    print(f"hubsync: invalid configuration for IngressSettings:\n  {variable}: {message}", file=sys.stderr)
    return SystemExit(2)


def load_secrets(settings: IngressSettings) -> list[str]:
    try:
        secrets = settings.secrets()
    except (OSError, ValueError) as exc:
        raise _exit(
            "HUBSYNC_INGRESS_WEBHOOK_SECRETS_FILE", f"cannot be read ({type(exc).__name__})"
        ) from None
    return secrets


def check_settings(settings: IngressSettings, environment: Environment) -> None:
    """What production refuses: a public URL that is not https (HubSpot would send webhooks and
    the OAuth redirect in clear), and signatures without a timestamp (replayable forever)."""
    if environment != Environment.PRODUCTION:
        return
    if not (settings.public_base_url or "").startswith("https://"):
        raise _exit("HUBSYNC_INGRESS_PUBLIC_BASE_URL", "must be set to an https URL in production")
    for variable, enabled in (("ACCEPT_V1", settings.accept_v1), ("ACCEPT_V2", settings.accept_v2)):
        if enabled and not settings.untimed_signatures_in_production:
            raise _exit(
                f"HUBSYNC_INGRESS_{variable}",
                "v1/v2 signatures carry no timestamp, so a captured webhook can be replayed forever: "
                "refused in production unless HUBSYNC_INGRESS_UNTIMED_SIGNATURES_IN_PRODUCTION=true",
            )
    if settings.accept_v1 or settings.accept_v2:
        log.warning("production accepts v1/v2 webhook signatures: a captured webhook can be replayed")


def caller_policy(settings: IngressSettings) -> dict[str, list[str]]:
    """Who may call each IngressService method: every method is listed (deny by default).
    The journal holds every accepted event; only operators (the CLI) read and replay it."""
    admins = settings.admin_callers
    return {f"/{SERVICE}/{name}": admins for name in ("ReadJournal", "ReplayJournal", "Reconcile")}


async def build(core: CoreSettings, redis: Redis) -> IngressSpec:
    """The ingress service's :class:`ServiceSpec` (a ``hubsync.core.service.SpecFactory``)."""
    settings = load_settings(IngressSettings)
    check_settings(settings, core.environment)
    secrets = load_secrets(settings)
    if not secrets:
        if core.environment == Environment.PRODUCTION:
            raise _exit("HUBSYNC_INGRESS_WEBHOOK_SECRETS_FILE", "at least one webhook secret is required")
        log.warning("no webhook secret configured: every webhook will be answered 401")
    verifier = WebhookVerifier(secrets, accept_v1=settings.accept_v1, accept_v2=settings.accept_v2)
    committer = EventCommitter(
        redis,
        retention_ms=settings.journal_retention_s * 1000,
        max_bytes=settings.journal_max_bytes,
        entry_format=settings.journal_format,
        dedupe_ttl_s=settings.dedupe_ttl_s,
        dedupe_buckets=settings.dedupe_buckets,
        timeout_s=settings.redis_timeout_s,
        window_s=settings.commit_window_s,
        max_events=settings.commit_max_events,
        ready_shards=core.ready_shards,
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
        raise _exit("HUBSYNC_INGRESS_HTTP_PORT", f"cannot listen ({exc.strerror})") from None
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
