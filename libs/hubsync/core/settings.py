"""Settings shared by every service, and validated loading that fails fast.

Each service declares one pydantic-settings class with its own ``env_prefix``
(``HUBSYNC_WRITER_`` ...); the values every service shares live in :class:`CoreSettings`
(prefix ``HUBSYNC_``). ``OTEL_*`` variables are left to the OpenTelemetry SDK.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from hubsync.core.callers import HASHED
from hubsync.core.portal_metrics import PortalLabels
from hubsync.core.tls import grpc_tls


class Environment(StrEnum):
    """``HUBSYNC_ENVIRONMENT``: production turns on the secure-by-default checks."""

    DEVELOPMENT = "development"
    PRODUCTION = "production"


def _sentinel_pairs(value: str) -> list[tuple[str, int]]:
    """``"host:port,host:port"`` → ``[(host, port), ...]``; ValueError names a bad entry."""
    pairs = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{part!r}: each sentinel must be host:port")
        pairs.append((host, int(port)))
    return pairs


#: URL schemes that select Redis Cluster: ``redis+cluster://[user:password@]host:port[,host:port...]``
#: (``rediss+cluster://`` for TLS). Every listed node is a seed: the client asks any one that
#: answers for the slot map, and follows MOVED/ASK redirections and topology changes from there.
CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://``, ``rediss+cluster://``)."""
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def cluster_seeds(url: str) -> list[tuple[str, int]]:
    """The ``(host, port)`` seed nodes of a ``redis+cluster://`` URL; ValueError names a bad one.

    Parsed by hand: ``urlsplit`` cannot read a port out of a comma-separated host list."""
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    seeds = []
    for item in filter(None, (h.strip() for h in hosts.split(","))):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{item!r}: each cluster node must be host:port")
        seeds.append((host.strip("[]"), int(port)))
    if not seeds:
        raise ValueError("a redis+cluster:// URL names at least one host:port")
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError("Redis Cluster has only database 0")
    return seeds


class CoreSettings(BaseSettings):
    """Values every service reads (``HUBSYNC_*``)."""

    model_config = SettingsConfigDict(env_prefix="HUBSYNC_", extra="ignore")

    environment: Environment = Environment.DEVELOPMENT
    log_level: str = "INFO"
    # redis://, rediss:// (TLS) or unix:// for one server or Sentinel; redis+cluster://host:port
    # [,host:port...] (rediss+cluster:// for TLS) for Redis Cluster, every listed node a seed.
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password: SecretStr | None = None
    # Redis Sentinel: "host:port,host:port" and the monitored master's name. When set, clients
    # find the master through the sentinels (and follow a failover); redis_url then only gives
    # the database number.
    redis_sentinels: str = ""
    redis_sentinel_master: str = ""
    # The sentinels' own password (requirepass in sentinel.conf), sent to the sentinels only:
    # separate from redis_password, which goes to the master. With a rediss:// URL the sentinels
    # are reached over TLS too, with the same CA and client certificate as the master.
    redis_sentinel_password: SecretStr | None = None
    # This service's identity towards the others, and the credential it presents.
    caller_name: str = ""
    # JSON file {"<caller>": "<token>"}: the per-caller credentials of the whole suite.
    caller_tokens_file: Path | None = None
    # Same as the file, inline (development and tests); the file wins when both are set.
    caller_tokens: SecretStr | None = None
    # Serve every gRPC call unauthenticated when no caller credentials are configured: an explicit,
    # loudly logged opt-in for local development and tests; refused in production.
    insecure_no_caller_auth: bool = False
    # gRPC server reflection (grpcurl): on in development unless turned off, opt-in in production.
    grpc_reflection: bool | None = None
    grpc_host: str = "127.0.0.1"
    # Overrides the service's default gRPC port (containers use one port for every service).
    grpc_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # Which portals metrics name in a ``portal`` attribute: none (default), top:<n> or all
    # (hubsync.core.portal_metrics).
    metrics_portal_labels: str = "none"
    auth_address: str = "127.0.0.1:50051"
    ingress_address: str = "127.0.0.1:50052"
    mapper_address: str = "127.0.0.1:50053"
    writer_address: str = "127.0.0.1:50054"
    hubspot_api_base: str = "https://api.hubapi.com"
    # Seconds a stopping server gives in-flight calls to finish.
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    # A server asks clients to reconnect after this long (0: never), so they resolve the service
    # name again and spread calls over pods added since; calls in flight are not cut.
    grpc_max_connection_age_seconds: float = Field(default=300.0, ge=0)
    # A second, plaintext port serving grpc.health.v1 only (0/unset: none), for probes that
    # cannot speak TLS (Kubernetes' native gRPC probes) while the API port requires mTLS.
    grpc_health_port: int | None = Field(default=None, ge=0, le=65535)
    # gRPC TLS (hubsync.core.tls): this process's certificate chain and key (PEM), and the CA
    # that signs every service's certificate: with it servers require client certificates (mTLS)
    # and clients verify servers. Files are read again when they change (rotation).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None
    # The name clients check in servers' certificates, when it is not the host of the address.
    tls_server_name: str = ""
    # Production refuses plaintext gRPC and Redis unless one of these says explicitly that a
    # service mesh (sidecars with mTLS) encrypts and authenticates the hop.
    grpc_tls_by_mesh: bool = False
    redis_tls_by_mesh: bool = False
    # rediss://: the CA that signed Redis's certificate (else the system's roots), and a client
    # certificate for a Redis that requires one (tls-auth-clients).
    redis_tls_ca_file: Path | None = None
    redis_tls_cert_file: Path | None = None
    redis_tls_key_file: Path | None = None
    # Ready sets (hubsync.core.ready): how many shards each queue's set of portals with work has
    # (the same for every service; changing it strands marks until the sweeper's next pass), how
    # often a consumer polls its leased shards when no nudge came, the shard lease's TTL, and the
    # sweeper that re-marks portals with work (a pass at most every interval, portals per second).
    ready_shards: int = Field(default=64, ge=1, le=16_384)
    ready_poll_s: float = Field(default=5.0, gt=0, le=300)
    ready_lease_ttl_ms: int = Field(default=30_000, ge=300)
    ready_sweep_interval_s: float = Field(default=3600.0, gt=0)
    ready_sweep_rate: float = Field(default=20.0, gt=0)
    # Fair share by work (hubsync.core.ready.fairshare; mapper's inbound turns): while a flowing
    # portal's turn ends more than READY_FAIR_LATE_MS after its first event was appended, a portal
    # that fills its quantum takes at most READY_FAIR_SHARE of the entries (1 turns it off).
    ready_fair_share: float = Field(default=0.5, gt=0, le=1)
    ready_fair_late_ms: int = Field(default=250, ge=0, le=600_000)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return upper

    @field_validator("metrics_portal_labels")
    @classmethod
    def _portal_labels(cls, value: str) -> str:
        return str(PortalLabels.parse(value))

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(
            ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")
        ):
            raise ValueError(
                "must start with redis://, rediss://, unix://, redis+cluster:// or rediss+cluster://"
            )
        if is_cluster_url(value):
            cluster_seeds(value)
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinel_list(cls, value: str) -> str:
        _sentinel_pairs(value)
        return value

    @model_validator(mode="after")
    def _sentinel_pair(self) -> CoreSettings:
        if bool(self.sentinel_addresses()) != bool(self.redis_sentinel_master):
            raise ValueError("HUBSYNC_REDIS_SENTINELS and HUBSYNC_REDIS_SENTINEL_MASTER must be set together")
        if self.sentinel_addresses() and is_cluster_url(self.redis_url):
            raise ValueError(
                "HUBSYNC_REDIS_SENTINELS and a redis+cluster:// HUBSYNC_REDIS_URL exclude each other: "
                "Redis Cluster fails over by itself"
            )
        return self

    @model_validator(mode="after")
    def _tls_files(self) -> CoreSettings:
        # Checked at start-up so a missing or mismatched file fails fast, naming the variable.
        grpc_tls(self)
        if (self.redis_tls_cert_file is None) != (self.redis_tls_key_file is None):
            raise ValueError(
                "HUBSYNC_REDIS_TLS_CERT_FILE and HUBSYNC_REDIS_TLS_KEY_FILE must be set together"
            )
        return self

    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """``HUBSYNC_REDIS_SENTINELS`` as ``(host, port)`` pairs."""
        return _sentinel_pairs(self.redis_sentinels)

    @field_validator("hubspot_api_base")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    def reflection_enabled(self) -> bool:
        """Whether gRPC reflection is on: as set, else on in development only."""
        if self.grpc_reflection is not None:
            return self.grpc_reflection
        return self.environment != Environment.PRODUCTION

    def caller_credentials(self) -> dict[str, str]:
        """Returns ``{caller: token}`` from the file or the inline value."""
        raw: str | None = None
        if self.caller_tokens_file is not None:
            raw = self.caller_tokens_file.read_text()
        elif self.caller_tokens is not None:
            raw = self.caller_tokens.get_secret_value()
        if not raw:
            return {}
        data = json.loads(raw)
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in data.items()
        ):
            raise ValueError("caller tokens must be a JSON object of non-empty strings")
        for name, value in data.items():
            if value.startswith(HASHED) and not re.fullmatch(r"[0-9a-f]{64}", value[len(HASHED) :]):
                raise ValueError(f"caller {name!r}: a digest must be {HASHED} and 64 hex digits")
        return data


S = TypeVar("S", bound=BaseSettings)


def invalid_configuration(owner: str, problems: Sequence[tuple[str, str]]) -> SystemExit:
    """Report settings that cannot work, the one way every service does: print each variable
    (never its value) and why on stderr, and return the ``SystemExit(2)`` for the caller to raise.

    Args:
        owner: The settings class the variables belong to (``IngressSettings``).
        problems: ``(variable, message)`` pairs; an empty variable: the message names them.
    """
    lines = [f"hubsync: invalid configuration for {owner}:"]
    lines += [f"  {variable}: {message}" if variable else f"  {message}" for variable, message in problems]
    print("\n".join(lines), file=sys.stderr)
    return SystemExit(2)


def load_settings(cls: type[S]) -> S:
    """Builds ``cls`` from the environment; on a bad value prints the variable and exits 2."""
    try:
        return cls()
    except ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix", ""))
        problems: list[tuple[str, str]] = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            # The input is left out on purpose: it may be a secret. A check across variables
            # (no field) has a message that names them.
            if field:
                problems.append((f"{prefix}{field}".upper(), err["msg"]))
            else:
                problems.append(("", err["msg"].removeprefix("Value error, ")))
        raise invalid_configuration(cls.__name__, problems) from None
