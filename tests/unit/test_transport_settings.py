"""Transport settings fail fast and clearly; production refuses plaintext gRPC and Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from hubsync.core.devcerts import DevCA
from hubsync.core.settings import CoreSettings, Environment, cluster_seeds
from hubsync.core.tls import production_problems, redis_tls_options


def test_tls_files_are_checked_at_start_naming_the_variable(tmp_path: Path) -> None:
    ca = DevCA()
    good = ca.write(tmp_path, "svc")
    assert CoreSettings(tls_cert_file=good.cert, tls_key_file=good.key, tls_ca_file=good.ca).tls_cert_file

    with pytest.raises(ValidationError, match="HUBSYNC_TLS_KEY_FILE must be set together"):
        CoreSettings(tls_cert_file=good.cert)
    with pytest.raises(ValidationError, match="HUBSYNC_TLS_CA_FILE is set without"):
        CoreSettings(tls_ca_file=good.ca)
    with pytest.raises(ValidationError, match=r"HUBSYNC_TLS_CERT_FILE \(.*missing.crt\): cannot be read"):
        CoreSettings(tls_cert_file=tmp_path / "missing.crt", tls_key_file=good.key)
    other = ca.write(tmp_path / "other", "other")
    with pytest.raises(ValidationError, match=r"HUBSYNC_TLS_KEY_FILE .* does not match the certificate"):
        CoreSettings(tls_cert_file=good.cert, tls_key_file=other.key)
    with pytest.raises(ValidationError, match=r"HUBSYNC_TLS_CA_FILE .*: not a PEM"):
        CoreSettings(tls_cert_file=good.cert, tls_key_file=good.key, tls_ca_file=good.key)


def test_production_problems_name_every_missing_protection(tmp_path: Path) -> None:
    plain = CoreSettings(environment=Environment.PRODUCTION, redis_url="redis://r:6379/0")
    text = "\n".join(production_problems(plain))
    for variable in ("HUBSYNC_TLS_CERT_FILE", "HUBSYNC_REDIS_URL", "HUBSYNC_REDIS_PASSWORD"):
        assert variable in text

    files = DevCA().write(tmp_path, "svc")
    secured = CoreSettings(
        environment=Environment.PRODUCTION,
        redis_url="rediss://r:6380/0",
        redis_password=SecretStr("p"),
        tls_cert_file=files.cert,
        tls_key_file=files.key,
        tls_ca_file=files.ca,
    )
    assert production_problems(secured) == []
    # TLS without client authentication is not enough.
    one_way = secured.model_copy(update={"tls_ca_file": None})
    assert "HUBSYNC_TLS_CA_FILE" in "\n".join(production_problems(one_way))
    # An ACL user and password in the URL count as AUTH; the mesh opt-outs must be explicit.
    meshed = CoreSettings(
        environment=Environment.PRODUCTION,
        redis_url="redis://hubsync:secret@r:6379/0",
        grpc_tls_by_mesh=True,
        redis_tls_by_mesh=True,
    )
    assert production_problems(meshed) == []


def test_rediss_verifies_the_server_with_the_configured_ca(tmp_path: Path) -> None:
    files = DevCA().write(tmp_path, "redis")
    settings = CoreSettings(
        redis_url="rediss://r:6380/0",
        redis_tls_ca_file=files.ca,
        redis_tls_cert_file=files.cert,
        redis_tls_key_file=files.key,
    )
    assert redis_tls_options(settings) == {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_ca_certs": str(files.ca),
        "ssl_certfile": str(files.cert),
        "ssl_keyfile": str(files.key),
    }
    assert redis_tls_options(CoreSettings(redis_url="redis://r:6379/0")) == {}


def test_redis_cluster_url_is_checked_and_held_to_the_same_production_rules(tmp_path: Path) -> None:
    """``redis+cluster://`` selects the cluster client; production still wants TLS and AUTH."""
    seeds = CoreSettings(redis_url="redis+cluster://a:7000, b:7001,[::1]:7002/0")
    assert cluster_seeds(seeds.redis_url) == [("a", 7000), ("b", 7001), ("::1", 7002)]
    for bad, message in (
        ("redis+cluster://a/0", "each cluster node must be host:port"),
        ("redis+cluster:///0", "at least one host:port"),
        ("redis+cluster://a:7000/2", "only database 0"),
        ("redis-cluster://a:7000", "must start with"),
    ):
        with pytest.raises(ValidationError, match=message):
            CoreSettings(redis_url=bad)
    with pytest.raises(ValidationError, match="exclude each other"):
        CoreSettings(redis_url="redis+cluster://a:7000", redis_sentinels="s:26379", redis_sentinel_master="m")

    plain = CoreSettings(environment=Environment.PRODUCTION, redis_url="redis+cluster://a:7000,b:7001")
    text = "\n".join(production_problems(plain))
    assert "HUBSYNC_REDIS_URL" in text and "HUBSYNC_REDIS_PASSWORD" in text
    files = DevCA().write(tmp_path, "svc")
    secured = CoreSettings(
        environment=Environment.PRODUCTION,
        redis_url="rediss+cluster://hubsync:secret@a:7000,b:7001/0",
        redis_tls_ca_file=files.ca,
        tls_cert_file=files.cert,
        tls_key_file=files.key,
        tls_ca_file=files.ca,
    )
    assert production_problems(secured) == []  # TLS by scheme, AUTH from the URL's user info
    assert redis_tls_options(secured)["ssl_ca_certs"] == str(files.ca)


@pytest.mark.parametrize("service", ["auth", "ingress", "mapper", "writer"])
def test_production_service_refuses_plaintext_transport(service: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUBSYNC_", "OTEL_"))}
    env |= {
        "HUBSYNC_ENVIRONMENT": "production",
        "HUBSYNC_CALLER_TOKENS": json.dumps({service: "a-token-of-enough-length-for-production"}),
        "HUBSYNC_REDIS_URL": "redis://127.0.0.1:1/0",
        "HUBSYNC_GRPC_PORT": "0",
    }
    proc = subprocess.run(
        [sys.executable, "-m", f"hubsync.{service}"], env=env, capture_output=True, timeout=60, check=False
    )
    assert proc.returncode == 2, proc.stderr.decode()[-2000:]
    output = proc.stdout + proc.stderr
    for variable in (b"HUBSYNC_TLS_CERT_FILE", b"HUBSYNC_REDIS_URL", b"HUBSYNC_REDIS_PASSWORD"):
        assert variable in output, output.decode()[-2000:]
