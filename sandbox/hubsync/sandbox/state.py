"""Everything the sandbox knows: portals' CRM data, tokens, limits, faults, logs, webhooks."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .config import AppConfig, FaultRule, PortalConfig, SandboxConfig
from .ratelimit import RateLimiter
from .store import Change, Clock, PortalStore, WriteSource
from .webhooks import WebhookDispatcher

# Where a logged answer came from (``RequestLog`` entries' ``origin``).
ORIGIN_API = "api"  # the endpoint's own answer (including its 4xx)
ORIGIN_RATE_LIMIT = "rate_limit"  # the portal's own limiter refused: a genuine 429
ORIGIN_FAULT = "fault"  # an injected fault rule answered


@dataclass(slots=True)
class RequestOutcome:
    """What the request log needs to know beyond the status: fired fault rules, the limiter's
    policy for a genuine 429, the grant of an OAuth token request."""

    faults: list[dict[str, Any]] = field(default_factory=list)
    policy: str | None = None
    grant_type: str | None = None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.faults:
            out["faults"] = self.faults
        if self.policy is not None:
            out["rateLimitPolicy"] = self.policy
        if self.grant_type is not None:
            out["grantType"] = self.grant_type
        return out


@dataclass(slots=True)
class Token:
    """An access token: a private-app token (never expires) or an OAuth access token."""

    token: str
    kind: str  # "private" or "oauth"
    hub_id: int
    app_id: int
    scopes: list[str]
    expires_at: int | None = None  # epoch ms; None for private-app tokens
    refresh_token: str | None = None
    user: str = "sandbox-user@example.com"
    user_id: int = 1
    # Who this token's writes are attributed to in webhooks.
    source: WriteSource = field(default=WriteSource("INTEGRATION"))

    def rate_key(self) -> str:
        # Private apps of one account share its limits; each OAuth app has its own burst bucket.
        return f"oauth:{self.app_id}" if self.kind == "oauth" else "private"


@dataclass(slots=True)
class RefreshToken:
    token: str
    hub_id: int
    app_id: int
    client_id: str
    scopes: list[str]
    revoked: bool = False
    user: str = "sandbox-user@example.com"
    user_id: int = 1


@dataclass(slots=True)
class AuthCode:
    code: str
    client_id: str
    redirect_uri: str
    hub_id: int
    scopes: list[str]
    used: bool = False


class RequestLog:
    """Counts of every API request by endpoint, status and portal, plus the latest entries.

    Each entry says where its answer came from (``origin``): ``"api"`` the endpoint itself,
    ``"rate_limit"`` the portal's own limiter (a genuine 429), ``"fault"`` an injected fault.
    Fault rules that fired on a request are listed under ``faults`` (a latency-only rule delays a
    real answer, so its origin stays ``"api"``); OAuth token requests name their ``grantType``.
    """

    def __init__(self, size: int):
        self.entries: deque[tuple[Any, ...]] = deque(maxlen=size)
        self.by_endpoint: dict[str, int] = {}
        self.by_status: dict[int, int] = {}
        self.by_portal: dict[int, int] = {}
        self.by_endpoint_status: dict[str, dict[int, int]] = {}
        self.by_origin: dict[str, int] = {}
        self.faults_by_kind: dict[str, int] = {}
        self.rate_limited_by_policy: dict[str, int] = {}
        self.by_grant_type: dict[str, dict[int, int]] = {}
        self.total = 0

    def add(
        self,
        at: int,
        endpoint: str,
        path: str,
        status: int,
        portal: int | None,
        app_id: int | None,
        ms: float,
        extra: dict[str, Any] | None,
        origin: str = ORIGIN_API,
        outcome: RequestOutcome | None = None,
    ) -> None:
        self.total += 1
        if outcome is not None:
            extra = {**(extra or {}), **outcome.to_wire()}
            for f in outcome.faults:
                self.faults_by_kind[f["kind"]] = self.faults_by_kind.get(f["kind"], 0) + 1
            if outcome.policy is not None:
                self.rate_limited_by_policy[outcome.policy] = (
                    self.rate_limited_by_policy.get(outcome.policy, 0) + 1
                )
            if outcome.grant_type is not None:
                g = self.by_grant_type.setdefault(outcome.grant_type, {})
                g[status] = g.get(status, 0) + 1
        self.entries.append((self.total, at, endpoint, path, status, portal, app_id, ms, origin, extra))
        self.by_endpoint[endpoint] = self.by_endpoint.get(endpoint, 0) + 1
        self.by_status[status] = self.by_status.get(status, 0) + 1
        self.by_origin[origin] = self.by_origin.get(origin, 0) + 1
        if portal is not None:
            self.by_portal[portal] = self.by_portal.get(portal, 0) + 1
        es = self.by_endpoint_status.setdefault(endpoint, {})
        es[status] = es.get(status, 0) + 1

    def clear(self) -> None:
        self.entries.clear()
        self.by_endpoint.clear()
        self.by_status.clear()
        self.by_portal.clear()
        self.by_endpoint_status.clear()
        self.by_origin.clear()
        self.faults_by_kind.clear()
        self.rate_limited_by_policy.clear()
        self.by_grant_type.clear()
        self.total = 0

    def to_wire(self, limit: int | None = None, since: int = 0) -> dict[str, Any]:
        entries = [e for e in self.entries if e[0] > since]
        if limit is not None:
            entries = entries[-limit:] if limit > 0 else []
        return {
            "total": self.total,
            "counts": {
                "byEndpoint": self.by_endpoint,
                "byStatus": {str(k): v for k, v in self.by_status.items()},
                "byPortal": {str(k): v for k, v in self.by_portal.items()},
                "byEndpointAndStatus": {
                    e: {str(s): n for s, n in d.items()} for e, d in self.by_endpoint_status.items()
                },
                "byOrigin": self.by_origin,
                "faultsByKind": self.faults_by_kind,
                "rateLimitedByPolicy": self.rate_limited_by_policy,
                "byGrantType": {g: {str(s): n for s, n in d.items()} for g, d in self.by_grant_type.items()},
            },
            "entries": [
                {
                    "seq": e[0],
                    "at": e[1],
                    "endpoint": e[2],
                    "path": e[3],
                    "status": e[4],
                    "portalId": e[5],
                    "appId": e[6],
                    "durationMs": round(e[7], 3),
                    "origin": e[8],
                    "injected": e[8] == ORIGIN_FAULT,
                    **(e[9] or {}),
                }
                for e in entries
            ],
        }


class SandboxState:
    """The live state of one sandbox instance."""

    def __init__(self, config: SandboxConfig):
        self.config = config
        self.clock = Clock()
        self.webhooks = WebhookDispatcher(config, self.clock.now_ms)
        self.limiter = RateLimiter(config.rate_limits_enabled)
        self.requests = RequestLog(config.request_log_size)
        self._setup()

    def _setup(self) -> None:
        cfg = self.config
        self.rng = random.Random(cfg.seed)
        # Copies: the admin API changes limits at runtime, a reset must bring back the config's.
        self.portals: dict[int, PortalConfig] = {p.hub_id: p.model_copy(deep=True) for p in cfg.portals}
        self.apps: dict[int, AppConfig] = {a.app_id: a for a in cfg.apps}
        self.apps_by_client: dict[str, AppConfig] = {a.client_id: a for a in cfg.apps}
        self.stores: dict[int, PortalStore] = {
            p.hub_id: PortalStore(
                p.hub_id,
                self.clock,
                self._emit,
                first_id=cfg.first_object_id,
                index_lag_ms=cfg.search_index_lag_ms,
                property_change_on_creation=cfg.property_change_on_creation,
                merged_id_redirect=cfg.merged_id_redirect,
            )
            for p in cfg.portals
        }
        self.tokens: dict[str, Token] = {}
        for p in cfg.portals:
            for pa in p.private_apps:
                t = Token(pa.token, "private", p.hub_id, pa.app_id, list(pa.scopes))
                t.source = self.integration_source(pa.app_id)
                self.tokens[pa.token] = t
        self.refresh_tokens: dict[str, RefreshToken] = {}
        self.codes: dict[str, AuthCode] = {}
        self.faults: list[FaultRule] = []
        self._fault_seq = 0
        for f in cfg.faults:
            self.add_fault(f)
        # Routes hold on to the log object, so a reset clears it in place.
        self.requests.clear()
        self.changes: deque[dict[str, Any]] = deque(maxlen=cfg.delivery_log_size)
        self.limiter.reset()

    async def reset(self) -> None:
        """Back to the state right after start-up (objects, tokens, logs, limits, faults)."""
        await self.webhooks.reset()
        self.webhooks.reset_subscriptions()
        self.clock.reset()
        self._setup()

    def integration_source(self, app_id: int) -> WriteSource:
        cfg = self.config
        return WriteSource(
            cfg.integration_change_source, cfg.integration_source_id_format.format(app_id=app_id), app_id
        )

    def ui_source(self) -> WriteSource:
        return WriteSource("CRM_UI", self.config.ui_source_id)

    def _emit(self, change: Change) -> None:
        self.changes.append(
            {
                "portalId": change.portal_id,
                "objectType": change.object_type,
                "objectId": change.object_id,
                "kind": change.kind,
                "occurredAt": change.occurred_at,
                "changeSource": change.source.change_source,
                "sourceId": change.source.source_id,
                "propertyName": change.property_name,
                "propertyValue": change.property_value,
                "objectWriteTraceId": change.write_trace_id,
                **change.extra,
            }
        )
        self.webhooks.on_change(change, self.stores[change.portal_id].type_def(change.object_type))

    # ---- tokens -----------------------------------------------------------------------------------

    def new_token_string(self, prefix: str, n: int = 48) -> str:
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
        return prefix + "".join(self.rng.choice(alphabet) for _ in range(n))

    def issue_access_token(self, rt: RefreshToken) -> Token:
        tok = Token(
            self.new_token_string("CO", 150),
            "oauth",
            rt.hub_id,
            rt.app_id,
            list(rt.scopes),
            expires_at=self.clock.now_ms() + self.config.token_ttl_s * 1000,
            refresh_token=rt.token,
            user=rt.user,
            user_id=rt.user_id,
        )
        tok.source = self.integration_source(rt.app_id)
        self.tokens[tok.token] = tok
        return tok

    def issue_refresh_token(self, app: AppConfig, hub_id: int, scopes: list[str]) -> RefreshToken:
        hexchars = "0123456789abcdef"
        parts = ["".join(self.rng.choice(hexchars) for _ in range(n)) for n in (8, 4, 4, 4, 12)]
        rt = RefreshToken("na1-" + "-".join(parts), hub_id, app.app_id, app.client_id, scopes)
        self.refresh_tokens[rt.token] = rt
        return rt

    def revoke_refresh_token(self, rt: RefreshToken) -> None:
        """Revokes a refresh token and every access token it minted."""
        rt.revoked = True
        for k, t in list(self.tokens.items()):
            if t.refresh_token == rt.token:
                del self.tokens[k]

    # ---- faults -----------------------------------------------------------------------------------

    def add_fault(self, rule: FaultRule) -> FaultRule:
        self._fault_seq += 1
        # A copy: firing counts down ``remaining``, and the config's rule must stay as it was.
        rule = rule.model_copy(update={"id": rule.id or f"fault-{self._fault_seq}"})
        self.faults.append(rule)
        return rule
