"""The auth service's settings (``HUBSYNC_AUTH_*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SCOPES = (
    "oauth crm.objects.contacts.read crm.objects.contacts.write crm.objects.companies.read "
    "crm.objects.companies.write crm.objects.deals.read crm.objects.deals.write"
)

__all__ = ["DEFAULT_SCOPES", "AuthSettings"]


class AuthSettings(BaseSettings):
    """Values only the auth service reads."""

    model_config = SettingsConfigDict(env_prefix="HUBSYNC_AUTH_", extra="ignore")

    # The public app's OAuth credentials.
    client_id: str = ""
    client_secret: SecretStr | None = None
    # Where HubSpot sends the user back (ingress's /oauth/callback); https outside development.
    redirect_uri: str = ""
    # Other redirect URIs a BeginAuthorization may name (JSON list); any other is refused.
    extra_redirect_uris: list[str] = Field(default_factory=list)
    # Space-separated scopes the authorize URL asks for when the caller names none.
    scopes: str = DEFAULT_SCOPES
    authorize_url: str = "https://app.hubspot.com/oauth/authorize"
    # Token endpoint, relative to HUBSYNC_HUBSPOT_API_BASE (v1 sunsets 2027-02-16).
    token_path: str = "/oauth/v3/token"
    revoke_path: str = "/oauth/v3/token/revoke"
    introspect_path: str = "/oauth/v3/token/introspect"
    # Key ring JSON {"active": kid, "keys": {kid: base64 32 bytes}}: a mounted file, or inline.
    keyring_file: Path | None = None
    keyring: SecretStr | None = None
    # GetAccessToken refreshes when the token lives less than this (a request's min_ttl overrides).
    refresh_margin_s: float = Field(default=300.0, ge=0)
    # How often the background refresher looks for connections about to expire (0: never).
    refresher_interval_s: float = Field(default=60.0, ge=0)
    # > 0: the refresher leaves a connection whose token nobody asked for in this long to expire;
    # its next GetAccessToken refreshes it on demand (0: keep every connection fresh).
    refresh_idle_after_s: float = Field(default=3600.0, ge=0)
    # How long a BeginAuthorization state is accepted.
    state_ttl_s: int = Field(default=600, ge=10, le=3600)
    # The cross-replica refresh lock expires after this (a crashed holder blocks no longer).
    refresh_lock_ttl_s: float = Field(default=30.0, ge=1)
    # Attempts and first backoff delay for transient token-endpoint failures (5xx, 429, network).
    refresh_attempts: int = Field(default=4, ge=1, le=10)
    refresh_backoff_s: float = Field(default=0.2, ge=0)
    # Timeout of one HTTP call to HubSpot's OAuth endpoints.
    http_timeout_s: float = Field(default=10.0, gt=0)
    # Callers allowed to read tokens (GetAccessToken, InvalidateAccessToken).
    token_readers: list[str] = Field(default_factory=lambda: ["writer"])
    # Callers allowed to create, revoke and rotate (people, through the CLI).
    admin_callers: list[str] = Field(default_factory=lambda: ["cli"])
    # Callers allowed to begin and complete the OAuth flow (ingress serves the redirect).
    oauth_callers: list[str] = Field(default_factory=lambda: ["cli", "ingress"])

    @field_validator("authorize_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value

    @field_validator("token_path", "revoke_path", "introspect_path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with /")
        return value

    def allowed_redirect_uris(self) -> frozenset[str]:
        """Return the redirect URIs BeginAuthorization accepts: the configured one and the extra ones."""
        return frozenset(uri for uri in (self.redirect_uri, *self.extra_redirect_uris) if uri)

    @property
    def scope_list(self) -> list[str]:
        """Return the default scopes as a list."""
        return self.scopes.replace(",", " ").split()
