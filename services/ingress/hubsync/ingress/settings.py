"""The ingress service's settings (``HUBSYNC_INGRESS_*``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from hubsync.core.settings import Environment
from hubsync.ingress.events import reconcilable_type

__all__ = ["IngressSettings"]

HOUR_S = 3600


class IngressSettings(BaseSettings):
    """Values only the ingress service reads."""

    model_config = SettingsConfigDict(env_prefix="HUBSYNC_INGRESS_", extra="ignore")

    # Where the webhook/OAuth HTTP server listens (loopback unless deployed behind a Service).
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    # The URL HubSpot calls, scheme and host included: v3 signatures cover it, and behind a load
    # balancer the pod sees another host. Default: http://<HTTP_HOST>:<bound port>.
    public_base_url: str | None = None
    # The apps' client secrets (JSON list); several may be active while one is rotated.
    webhook_secrets: list[SecretStr] = Field(default_factory=list)
    # A mounted file with the same JSON list (or one secret per line); adds to the inline list.
    webhook_secrets_file: Path | None = None
    # v1/v2 signatures have no timestamp (no replay window): off unless configured, and refused
    # in production unless UNTIMED_SIGNATURES_IN_PRODUCTION also says so.
    accept_v1: bool = False
    accept_v2: bool = False
    untimed_signatures_in_production: bool = False
    # Our HubSpot app ids, comma-separated (the public app, and any private app whose token
    # writer uses): INTEGRATION changes with one of these sourceIds are our own writes' echoes.
    app_id: str = ""
    # The edge's own limits (docs/ingress.md#limits); a reverse proxy in front should be as strict.
    # A body larger than this is answered 413 unread: 100 events with every field at its widest
    # and 2 KB property values fit (bench/ingress/slow_clients.md measures it).
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    # Request line and headers together; a larger block is answered 431.
    max_header_bytes: int = Field(default=16 * 1024, ge=1024, le=1024 * 1024)
    # From connecting (or a kept-alive request's first byte) to the end of the headers, and from
    # there to the end of the body: a client that takes longer gets 408 and is disconnected.
    header_timeout_s: float = Field(default=10.0, gt=0, le=300)
    body_timeout_s: float = Field(default=10.0, gt=0, le=300)
    # Open connections (and requests in flight) past which a request is answered 503: with the
    # body limit, it bounds the memory held by bodies being read.
    max_connections: int = Field(default=500, ge=1)
    # How long an event id is remembered; longer than HubSpot's 24 h retry horizon.
    dedupe_ttl_s: int = Field(default=25 * HOUR_S, ge=60)
    # Dedupe digests of one portal's hour are spread over this many Redis sets so each stays a
    # compact intset (<= 512 members by Redis's default): size it to events/hour / 400.
    dedupe_buckets: int = Field(default=4096, ge=1, le=65536)
    # How long each portal's event stream (the journal) keeps an entry: past HubSpot's 24 h
    # retry horizon, so a replay can cover any event HubSpot could still be retrying. Trimmed on
    # append (XADD MINID ~: whole stream nodes, so a little more may stay).
    journal_retention_s: int = Field(default=26 * HOUR_S, ge=HOUR_S)
    # A portal's stream past this many bytes of Redis memory loses its oldest entries, whatever
    # their age (0: no cap). At ~144 B per event, 512 MiB hold ~3.7 M events.
    journal_max_bytes: int = Field(default=512 * 1024 * 1024, ge=0)
    # How entries are stored: ``compact`` (one protobuf field, ~150 B per event) or ``fields``
    # (0.1.0's format, ~430 B, the only one mapper 0.1.0 reads): set ``fields`` while
    # upgrading from 0.1.0 with mapper replicas still running, then ``compact`` (UPGRADING.md).
    journal_format: Literal["compact", "fields"] = "compact"
    # Group commit: how long a flush waits for more requests to join (0: one loop turn; under
    # load the requests arriving during one round trip form the next group anyway).
    commit_window_s: float = Field(default=0.0, ge=0, le=0.05)
    # Most events written in one round trip.
    commit_max_events: int = Field(default=2000, ge=1)
    # How long a request waits for Redis before answering 503.
    redis_timeout_s: float = Field(default=3.0, gt=0, le=4.5)
    # Reconciliation: seconds between delta polls per known portal (0: only on demand).
    reconcile_interval_seconds: float = Field(default=900.0, ge=0)
    # Object types a reconciliation pass covers when the request names none: standard types by
    # name (tickets, notes...) or 0-… id, custom objects by their 2-… id (not by name).
    reconcile_object_types: list[str] = Field(default_factory=lambda: ["companies", "contacts", "deals"])
    # Search results lag writes by seconds: a pass covers changes up to this long before now.
    reconcile_settle_ms: int = Field(default=5000, ge=0)
    # First pass without a checkpoint looks this far back.
    reconcile_lookback_s: int = Field(default=HOUR_S, ge=0)
    # How long a ReplayJournal request id is remembered.
    replay_request_ttl_s: int = Field(default=7 * 24 * HOUR_S, ge=60)

    # What traces webhook requests open (docs/ingress.md#observability): ``round_trip`` (one
    # ``ingress.commit`` span per Redis round trip for HubSpot's accepted requests; a server span
    # for a request that brings a traceparent or is refused), ``request`` (a server span for
    # every request: about 40 % of the 1-event throughput, bench/ingress), ``off``.
    webhook_spans: Literal["round_trip", "request", "off"] = "round_trip"
    # The OpenTelemetry ASGI middleware's server spans on the other routes (/oauth/callback).
    http_server_spans: bool = True
    # Callers allowed ReplayJournal and Reconcile (people, through the CLI); ReadJournal is open
    # to every authenticated caller.
    admin_callers: list[str] = Field(default_factory=lambda: ["cli"])
    # Run on uvloop (shipped with uvicorn[standard]): it roughly halves the per-request cost of
    # the socket work the webhook edge is made of. Read by ``__main__`` only, before the loop starts.
    uvloop: bool = True

    @field_validator("reconcile_object_types")
    @classmethod
    def _reconcilable(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if reconcilable_type(name) is None]
        if unknown:
            raise ValueError(
                f"{unknown}: not a standard object type (or its 0-… id) nor a custom object's 2-… id"
            )
        return value

    @field_validator("public_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @classmethod
    def variable(cls, name: str) -> str:
        """Return the environment variable of setting ``name`` (``HUBSYNC_INGRESS_<NAME>``)."""
        return f"{cls.model_config.get('env_prefix', '')}{name}".upper()

    def problems(self, environment: Environment) -> list[tuple[str, str]]:
        """Return what ``environment`` refuses in these settings, as ``(variable, why)`` pairs.

        Production refuses a public URL that is not https (HubSpot would send webhooks and the
        OAuth redirect in clear) and signatures without a timestamp (replayable forever) unless
        explicitly opted into.
        """
        if environment != Environment.PRODUCTION:
            return []
        found: list[tuple[str, str]] = []
        if not (self.public_base_url or "").startswith("https://"):
            found.append((self.variable("public_base_url"), "must be set to an https URL in production"))
        for name, enabled in (("accept_v1", self.accept_v1), ("accept_v2", self.accept_v2)):
            if enabled and not self.untimed_signatures_in_production:
                found.append(
                    (
                        self.variable(name),
                        "v1/v2 signatures carry no timestamp, so a captured webhook can be replayed "
                        "forever: refused in production unless "
                        f"{self.variable('untimed_signatures_in_production')}=true",
                    )
                )
        return found

    def secrets(self) -> list[str]:
        """Every active client secret: the inline list, then the file's.

        Raises:
            OSError: The file cannot be read.
            ValueError: The file's JSON is not a list of strings.

        """
        found = [s.get_secret_value() for s in self.webhook_secrets if s.get_secret_value()]
        if self.webhook_secrets_file is not None:
            raw = self.webhook_secrets_file.read_text().strip()
            if raw.startswith("["):
                data = json.loads(raw)
                if not isinstance(data, list) or not all(isinstance(s, str) for s in data):
                    raise ValueError("must hold a JSON list of strings")
                found.extend(s for s in data if s)
            else:
                found.extend(line.strip() for line in raw.splitlines() if line.strip())
        return found
