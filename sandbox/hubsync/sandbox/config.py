"""Configuration of the sandbox: portals, apps, limits, webhooks and faults.

Every default is deterministic so that the demo, the docs and the tests can rely on it:
one portal (hub_id 12345, Free/Starter preset) with the private-app token
``pat-na1-00000000-0000-4000-8000-000000012345`` and one public app (app_id 1001,
client_id ``hubsync-sandbox-client-id``, client_secret ``hubsync-sandbox-client-secret``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# (burst per 10 s, daily budget) per plan preset, from the facts file section 5.
PLAN_PRESETS: dict[str, tuple[int, int]] = {
    "free": (100, 250_000),
    "starter": (100, 250_000),
    "professional": (190, 625_000),
    "enterprise": (190, 1_000_000),
    "api_add_on": (250, 2_000_000),
}
# A public OAuth app gets 110 requests per 10 s per installing account.
OAUTH_APP_BURST = 110

# HubSpot retries a failed delivery 10 times over 24 hours "with randomization"; the exact
# spacing is not published (UNSURE), so this default only keeps the count and the horizon.
DEFAULT_RETRY_SCHEDULE_S: list[float] = [
    60,
    120,
    300,
    600,
    1_200,
    2_400,
    4_800,
    9_600,
    18_000,
    49_320,
]

DEFAULT_PRIVATE_TOKEN = "pat-na1-00000000-0000-4000-8000-000000012345"
DEFAULT_CLIENT_ID = "hubsync-sandbox-client-id"
DEFAULT_CLIENT_SECRET = "hubsync-sandbox-client-secret"  # a public, documented test value

ALL_SCOPES = [
    "oauth",
    "crm.objects.contacts.read",
    "crm.objects.contacts.write",
    "crm.objects.companies.read",
    "crm.objects.companies.write",
    "crm.objects.deals.read",
    "crm.objects.deals.write",
    "crm.schemas.contacts.read",
    "crm.schemas.contacts.write",
    "crm.schemas.companies.read",
    "crm.schemas.companies.write",
    "crm.schemas.deals.read",
    "crm.schemas.deals.write",
    "tickets",
    "e-commerce",
    "crm.objects.quotes.read",
    "crm.objects.quotes.write",
    "crm.objects.line_items.read",
    "crm.objects.line_items.write",
    "crm.objects.products.read",
    "crm.objects.products.write",
    "crm.objects.custom.read",
    "crm.objects.custom.write",
    "crm.schemas.custom.read",
    "crm.schemas.custom.write",
    "crm.objects.owners.read",
    "crm.lists.read",
    "crm.lists.write",
    "tickets",
]


# Statuses a fault rule can inject: HubSpot's retryable errors plus Cloudflare's 521-526.
FAULT_STATUSES = frozenset({423, 429, 477, 500, 502, 503, 504, 521, 522, 523, 524, 525, 526})


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PrivateAppConfig(_Model):
    """A private app installed in one portal: a static bearer token."""

    token: str
    app_id: int = 2001
    name: str = "hubsync private app"
    scopes: list[str] = Field(default_factory=lambda: list(ALL_SCOPES))


class PortalConfig(_Model):
    """One HubSpot account (portal)."""

    hub_id: int = 12345
    plan: Literal["free", "starter", "professional", "enterprise", "api_add_on"] = "starter"
    # Overrides of the preset, e.g. a tiny burst for tests or a huge one for benchmarks.
    burst_per_10s: int | None = None
    daily_limit: int | None = None
    # Search is limited per account to this many requests per second.
    search_per_second: int = 5
    private_apps: list[PrivateAppConfig] = Field(
        default_factory=lambda: [PrivateAppConfig(token=DEFAULT_PRIVATE_TOKEN)]
    )
    hub_domain: str | None = None

    @property
    def burst(self) -> int:
        return self.burst_per_10s if self.burst_per_10s is not None else PLAN_PRESETS[self.plan][0]

    @property
    def daily(self) -> int:
        return self.daily_limit if self.daily_limit is not None else PLAN_PRESETS[self.plan][1]

    @property
    def domain(self) -> str:
        return self.hub_domain or f"sandbox-{self.hub_id}.hubspot.com"


class WebhookSubscriptionConfig(_Model):
    """Webhook settings of one app: where deliveries go and which events."""

    target_url: str | None = None
    # e.g. "contact.creation", "contact.propertyChange" (every property) or
    # "contact.propertyChange:email" (one property, as HubSpot subscribes per property).
    subscription_types: list[str] = Field(
        default_factory=lambda: (
            [
                f"{obj}.{kind}"
                for obj in ("contact", "company", "deal", "ticket", "product", "line_item")
                for kind in (
                    "creation",
                    "deletion",
                    "propertyChange",
                    "merge",
                    "restore",
                    "associationChange",
                )
            ]
            + ["contact.privacyDeletion"]
        )
    )
    max_concurrent_requests: int = 10


class AppConfig(_Model):
    """A public (OAuth) app."""

    app_id: int = 1001
    client_id: str = DEFAULT_CLIENT_ID
    client_secret: str = DEFAULT_CLIENT_SECRET
    # Empty means any redirect_uri is accepted by the authorize endpoint.
    redirect_uris: list[str] = Field(default_factory=list)
    scopes: list[str] = Field(default_factory=lambda: list(ALL_SCOPES))
    # Portals where the app is installed (gets webhooks). Empty means every portal.
    installed_in: list[int] = Field(default_factory=list)
    webhooks: WebhookSubscriptionConfig = Field(default_factory=WebhookSubscriptionConfig)


class FaultRule(_Model):
    """One injected fault. A rule matches a request by portal and endpoint.

    ``endpoint`` is ``"METHOD /route/template"`` (e.g. ``"POST /crm/v3/objects/{objectType}/batch/read"``),
    a route template alone (any method), or a plain path prefix ending in ``*``; None matches all.
    """

    id: str | None = None
    portal: int | None = None
    endpoint: str | None = None
    # Fail this fraction of matching requests with ``status`` (423, 429, 500, 502, 503, 504).
    status: int | None = None
    error_rate: float = 1.0
    latency_ms: float = 0.0
    # Hold the request this long, then answer 504 (a client with a shorter timeout sees a timeout).
    timeout_s: float | None = None
    # Answer 502 when a batch carries more than this many inputs.
    batch_limit: int | None = None
    # Stop after firing this many times (None: forever).
    remaining: int | None = None

    @model_validator(mode="after")
    def _check_status(self) -> FaultRule:
        if self.status is not None and self.status not in FAULT_STATUSES:
            raise ValueError(f"status must be one of {sorted(FAULT_STATUSES)}")
        return self


class SandboxConfig(_Model):
    """Everything the sandbox can be told at start-up."""

    portals: list[PortalConfig] = Field(default_factory=lambda: [PortalConfig()])
    apps: list[AppConfig] = Field(default_factory=lambda: [AppConfig()])
    token_ttl_s: int = 1800
    # A write shows up in search results only after this many milliseconds.
    search_index_lag_ms: int = 0
    rate_limits_enabled: bool = True
    # Longer request targets (path + query) get 414. HubSpot's exact limit is UNSURE.
    max_uri_length: int = 8_192
    # Whether HubSpot sends Retry-After on a 429 is UNSURE; None (default) sends none, a number
    # sends that many seconds.
    rate_limit_retry_after_s: int | None = None
    # HubSpot says search is "counted separately"; whether it also draws on the daily budget
    # is UNSURE, so it is configurable (default: it does not).
    search_counts_toward_daily: bool = False
    # Webhooks
    webhook_timeout_s: float = 5.0
    webhook_retry_schedule_s: list[float] = Field(default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE_S))
    # Multiplies every retry delay: 0.001 turns 24 h into ~86 s; tests use smaller still.
    webhook_retry_scale: float = 1.0
    # Each delay is randomised by +/- this fraction (HubSpot: "with randomization").
    webhook_retry_jitter: float = 0.25
    webhook_max_batch: int = 100
    # Added to X-HubSpot-Request-Timestamp, e.g. -600000 to test that a verifier rejects stale v3
    # signatures (the signature itself stays valid for the shifted timestamp).
    webhook_timestamp_offset_ms: int = 0
    # Probability that a delivered batch is delivered once more; that a batch is shuffled and
    # held back a little so it overtakes / is overtaken by the next one.
    webhook_duplicate_probability: float = 0.0
    webhook_out_of_order_probability: float = 0.0
    # How long the dispatcher waits to gather events into one batch.
    webhook_batch_window_ms: float = 5.0
    # What ``sourceId`` an API write by an app carries. UNSURE: HubSpot's exact format is not
    # documented; "{app_id}" gives e.g. "1001". Fields: app_id.
    integration_source_id_format: str = "{app_id}"
    # changeSource for an app's API write. UNSURE between "INTEGRATION" and "API".
    integration_change_source: str = "INTEGRATION"
    ui_source_id: str = "userId:1"
    # HubSpot sends propertyChange events for the properties set at creation (UNSURE): configurable.
    property_change_on_creation: bool = True
    # Reading or writing a merged-away id reaches the record it was merged into (UNSURE for every
    # object type; HubSpot documents it for contacts). The primary lists them in hs_merged_object_ids.
    merged_id_redirect: bool = True
    # batch/create with a unique-value conflict: "reject_batch" answers 409 for the whole batch
    # (what HubSpot is observed to do for contacts); "partial" answers 207 with a CONFLICT error.
    # UNSURE, hence configurable.
    batch_create_conflict: Literal["reject_batch", "partial"] = "reject_batch"
    faults: list[FaultRule] = Field(default_factory=list)
    request_log_size: int = 10_000
    delivery_log_size: int = 10_000
    # Seeds ids, tokens and the probabilistic behaviour, for reproducible runs.
    seed: int = 0
    # First object id handed out in each portal.
    first_object_id: int = 1001

    @classmethod
    def load(cls, path: str | Path) -> SandboxConfig:
        """Reads a YAML (``.yaml``/``.yml``) or JSON file."""
        p = Path(path)
        text = p.read_text(encoding="utf-8")
        data: Any
        if p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
        return cls.model_validate(data)

    def portal(self, hub_id: int) -> PortalConfig:
        for p in self.portals:
            if p.hub_id == hub_id:
                return p
        raise KeyError(hub_id)

    def scaled_retry_delays(self) -> list[float]:
        return [d * self.webhook_retry_scale for d in self.webhook_retry_schedule_s]
