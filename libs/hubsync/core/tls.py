"""TLS and mutual TLS for gRPC between the services, with certificates from files.

Every service is given its own key pair and the CA that signs the whole suite's certificates
(``HUBSYNC_TLS_CERT_FILE``, ``HUBSYNC_TLS_KEY_FILE``, ``HUBSYNC_TLS_CA_FILE``; cert-manager writes
them in Kubernetes). As a server it serves TLS with its pair and, with a CA, requires every
client to present a certificate that CA signed (mTLS). As a client it checks the server's
certificate against the CA and presents its own pair. Caller tokens still say *who* may call
*what*; the certificates make sure nobody on the pod network reads or forges a hop.

Rotation: the server reads the files again when they change, before the next handshake
(grpc's dynamic certificate configuration), and a client channel opens a new connection set with
the new pair; calls in flight finish on the old one. A half-written rotation (a key that does not
match its certificate yet) keeps the previous pair and is tried again at the next handshake.

Production refuses plaintext (:func:`production_problems`): gRPC without TLS files, Redis
without ``rediss://`` or without a password, unless the operator says explicitly that a service
mesh secures the hop (``HUBSYNC_GRPC_TLS_BY_MESH`` / ``HUBSYNC_REDIS_TLS_BY_MESH``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

if TYPE_CHECKING:
    from hubsync.core.settings import CoreSettings

log = logging.getLogger(__name__)

# How often a client channel looks at its certificate files (a stat per file; no read unless changed).
CLIENT_RELOAD_CHECK_S = 30.0
# How long calls in flight on a channel with a replaced certificate may run on before it closes.
OLD_CHANNEL_GRACE_S = 60.0


class TLSConfigError(ValueError):
    """A TLS file is missing, unreadable, not PEM, or a key does not match its certificate."""


@dataclass(frozen=True)
class TLSFiles:
    """Where this process's TLS material lives. ``ca`` absent: no client authentication (server)
    and the system's roots (client)."""

    cert: Path
    key: Path
    ca: Path | None = None
    server_name: str = ""

    def paths(self) -> list[Path]:
        """The files set, to watch for rotation."""
        return [p for p in (self.cert, self.key, self.ca) if p is not None]

    def stamp(self) -> tuple[tuple[int, int, int], ...]:
        """Changes whenever a file is replaced (Kubernetes swaps a symlink; stat follows it)."""
        stamps = []
        for path in self.paths():
            st = path.stat()
            stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(stamps)


@dataclass(frozen=True)
class TLSMaterial:
    """The PEM bytes of one consistent read of :class:`TLSFiles`."""

    cert: bytes
    key: bytes
    ca: bytes | None
    not_after: str


def tls_files(
    cert: Path | None,
    key: Path | None,
    ca: Path | None,
    server_name: str = "",
    *,
    prefix: str = "HUBSYNC_TLS_",
) -> TLSFiles | None:
    """The configured files (None when TLS is off); raises :class:`TLSConfigError` naming the
    variable when the combination is incomplete or a file is unusable."""
    if cert is None and key is None:
        if ca is not None:
            raise TLSConfigError(
                f"{prefix}CA_FILE is set without {prefix}CERT_FILE and {prefix}KEY_FILE: "
                "every hop is mutual TLS, so each process needs its own certificate and key"
            )
        return None
    if cert is None or key is None:
        missing = f"{prefix}CERT_FILE" if cert is None else f"{prefix}KEY_FILE"
        raise TLSConfigError(f"{missing} must be set together with the other one")
    files = TLSFiles(cert=cert, key=key, ca=ca, server_name=server_name)
    load_material(files, prefix=prefix)
    return files


def load_material(files: TLSFiles, *, prefix: str = "HUBSYNC_TLS_") -> TLSMaterial:
    """Reads and checks the files: PEM certificate(s), a private key matching the first one, a CA."""
    cert_pem = _read(files.cert, f"{prefix}CERT_FILE")
    key_pem = _read(files.key, f"{prefix}KEY_FILE")
    ca_pem = _read(files.ca, f"{prefix}CA_FILE") if files.ca is not None else None
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise TLSConfigError(f"{prefix}CERT_FILE ({files.cert}): not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise TLSConfigError(f"{prefix}KEY_FILE ({files.key}): not an unencrypted PEM private key") from None
    if chain[0].public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise TLSConfigError(
            f"{prefix}KEY_FILE ({files.key}) does not match the certificate in {prefix}CERT_FILE"
        )
    if ca_pem is not None:
        try:
            x509.load_pem_x509_certificates(ca_pem)
        except ValueError:
            raise TLSConfigError(f"{prefix}CA_FILE ({files.ca}): not a PEM certificate bundle") from None
    return TLSMaterial(cert_pem, key_pem, ca_pem, chain[0].not_valid_after_utc.isoformat())


def _read(path: Path, variable: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TLSConfigError(f"{variable} ({path}): cannot be read: {exc.strerror or exc}") from None


def grpc_tls(settings: CoreSettings) -> TLSFiles | None:
    """This process's gRPC TLS files from ``HUBSYNC_TLS_*`` (None: plaintext)."""
    return tls_files(
        settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file, settings.tls_server_name
    )


# --- server ------------------------------------------------------------------------------------


class _ServerCertificates:
    """The fetcher grpc calls before every handshake: a new configuration once the files change."""

    def __init__(self, files: TLSFiles) -> None:
        self.files = files
        self._stamp = files.stamp()
        self.initial = self._configuration(load_material(files))

    @staticmethod
    def _configuration(material: TLSMaterial) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(material.key, material.cert)], material.ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Runs in a grpc thread for every new connection: never raise, keep it to a few stats.
        try:
            stamp = self.files.stamp()
            if stamp == self._stamp:
                return None
            material = load_material(self.files)
        except (OSError, TLSConfigError) as exc:
            log.warning("rotated TLS files not usable (yet); keeping the previous certificate: %s", exc)
            return None
        self._stamp = stamp
        log.info("TLS certificate reloaded", extra={"not_after": material.not_after})
        return self._configuration(material)


def server_credentials(files: TLSFiles) -> grpc.ServerCredentials:
    """TLS for a server; with a CA, clients must present a certificate it signed (mTLS)."""
    certificates = _ServerCertificates(files)
    return grpc.dynamic_ssl_server_credentials(
        certificates.initial,
        certificates.fetch,
        require_client_authentication=files.ca is not None,
    )


# --- client ------------------------------------------------------------------------------------


def channel_credentials(material: TLSMaterial) -> grpc.ChannelCredentials:
    """Channel credentials for gRPC over mutual TLS from ``material``."""
    return grpc.ssl_channel_credentials(
        root_certificates=material.ca, private_key=material.key, certificate_chain=material.cert
    )


def channel_options(files: TLSFiles) -> list[tuple[str, Any]]:
    """Channel options: the name to check in servers' certificates, when set."""
    return [("grpc.ssl_target_name_override", files.server_name)] if files.server_name else []


class _Method:
    """A multicallable that takes the channel current at call time (stubs are built once)."""

    def __init__(self, owner: ReloadingChannel, kind: str, args: tuple[Any, ...], kwargs: dict[str, Any]):
        self._owner = owner
        self._kind = kind
        self._args = args
        self._kwargs = kwargs

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        factory = getattr(self._owner.current(), self._kind)
        return factory(*self._args, **self._kwargs)(*args, **kwargs)


class ReloadingChannel(grpc.aio.Channel):  # type: ignore[misc]
    """A secure channel that opens a new inner channel when its certificate files change.

    grpc's channel credentials are fixed at creation; cert-manager renews a certificate long
    before it expires, and a process may run for longer than that. Calls already started finish
    on the old channel, which is closed after :data:`OLD_CHANNEL_GRACE_S`.
    """

    def __init__(self, open_inner: Any, files: TLSFiles) -> None:
        self._open_inner = open_inner
        self._files = files
        self._stamp = files.stamp()
        self._inner: grpc.aio.Channel = open_inner(load_material(files))
        self._checked = time.monotonic()
        self._retiring: set[asyncio.Task[None]] = set()

    def current(self) -> grpc.aio.Channel:
        """The inner channel, replaced first if the certificate files changed."""
        now = time.monotonic()
        if now - self._checked >= CLIENT_RELOAD_CHECK_S:
            self._checked = now
            self._maybe_reload()
        return self._inner

    def _maybe_reload(self) -> None:
        try:
            stamp = self._files.stamp()
            if stamp == self._stamp:
                return
            material = load_material(self._files)
        except (OSError, TLSConfigError) as exc:
            log.warning("rotated TLS files not usable (yet); keeping the previous certificate: %s", exc)
            return
        old, self._inner, self._stamp = self._inner, self._open_inner(material), stamp
        log.info("TLS client certificate reloaded", extra={"not_after": material.not_after})
        task = asyncio.get_running_loop().create_task(old.close(OLD_CHANNEL_GRACE_S))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def reload_now(self) -> None:
        """Looks at the files now instead of at the next periodic check (tests, SIGHUP)."""
        self._checked = time.monotonic()
        self._maybe_reload()

    async def __aenter__(self) -> ReloadingChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self, grace: float | None = None) -> None:
        """Closes the current and the retiring inner channels."""
        for task in list(self._retiring):
            task.cancel()
        await self._inner.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """The current inner channel's connectivity state."""
        return self.current().get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        """Waits for the current inner channel's state to change."""
        await self.current().wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        """Waits until the current inner channel is ready."""
        await self.current().channel_ready()

    def unary_unary(self, *args: Any, **kwargs: Any) -> Any:
        """A unary-unary method bound to whichever inner channel is current at call time."""
        return _Method(self, "unary_unary", args, kwargs)

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:
        """A unary-stream method bound to whichever inner channel is current at call time."""
        return _Method(self, "unary_stream", args, kwargs)

    def stream_unary(self, *args: Any, **kwargs: Any) -> Any:
        """A stream-unary method bound to whichever inner channel is current at call time."""
        return _Method(self, "stream_unary", args, kwargs)

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        """A stream-stream method bound to whichever inner channel is current at call time."""
        return _Method(self, "stream_stream", args, kwargs)


# --- production checks -------------------------------------------------------------------------


def production_problems(settings: CoreSettings) -> list[str]:
    """What production refuses about the transport, one message per problem (empty: fine)."""
    problems = []
    if settings.tls_cert_file is None and not settings.grpc_tls_by_mesh:
        problems.append(
            "HUBSYNC_TLS_CERT_FILE / HUBSYNC_TLS_KEY_FILE / HUBSYNC_TLS_CA_FILE: production serves and "
            "calls gRPC over mutual TLS; set the three files, or HUBSYNC_GRPC_TLS_BY_MESH=true if a "
            "service mesh encrypts and authenticates every hop"
        )
    elif settings.tls_cert_file is not None and settings.tls_ca_file is None:
        problems.append(
            "HUBSYNC_TLS_CA_FILE: production requires client certificates (mutual TLS); set the CA "
            "that signs the services' certificates"
        )
    if not redis_url_uses_tls(settings.redis_url) and not settings.redis_tls_by_mesh:
        problems.append(
            "HUBSYNC_REDIS_URL: production talks to Redis over TLS (rediss://... or "
            "rediss+cluster://...); set "
            "HUBSYNC_REDIS_TLS_BY_MESH=true only if a service mesh encrypts the hop"
        )
    if settings.redis_password is None and not _url_password(settings.redis_url):
        problems.append(
            "HUBSYNC_REDIS_PASSWORD: production needs Redis AUTH (a password, or an ACL user and "
            "password in HUBSYNC_REDIS_URL)"
        )
    return problems


# URL schemes of a Redis reached over TLS: one server (or Sentinel) and Redis Cluster.
_REDIS_TLS_SCHEMES = ("rediss", "rediss+cluster")


def redis_url_uses_tls(url: str) -> bool:
    """Whether ``url`` asks for TLS to Redis (``rediss://``, ``rediss+cluster://``)."""
    return urlsplit(url).scheme in _REDIS_TLS_SCHEMES


def _url_password(url: str) -> str:
    # A cluster URL lists several host:port pairs, which urlsplit cannot parse as one port: the
    # user info is read on its own.
    userinfo = urlsplit(url).netloc.rpartition("@")[0]
    return userinfo.partition(":")[2]


def redis_tls_options(settings: CoreSettings) -> dict[str, Any]:
    """redis-py connection options for ``rediss://`` and ``rediss+cluster://`` (CA and client
    certificate files)."""
    if not redis_url_uses_tls(settings.redis_url):
        return {}
    # The certificate and its host name are always verified (older redis-py skipped the name).
    options: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    if settings.redis_tls_ca_file is not None:
        options["ssl_ca_certs"] = str(settings.redis_tls_ca_file)
    if settings.redis_tls_cert_file is not None:
        options["ssl_certfile"] = str(settings.redis_tls_cert_file)
        options["ssl_keyfile"] = str(settings.redis_tls_key_file)
    return options
