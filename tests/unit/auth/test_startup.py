"""Start-up configuration: the key ring is required in production, bad values exit 2 naming the
variable, development without a key ring generates one (and says so loudly)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hubsync.auth.keyring import KeyRing
from hubsync.auth.service import check_settings, load_keyring
from hubsync.auth.settings import AuthSettings
from hubsync.core.settings import Environment


def test_production_without_key_ring_exits_2_naming_the_variable() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBSYNC_")}
    env |= {
        "HUBSYNC_ENVIRONMENT": "production",
        "HUBSYNC_CALLER_TOKENS": json.dumps({"writer": "w" * 32}),
        "HUBSYNC_REDIS_URL": "redis://127.0.0.1:1/0",
        "HUBSYNC_GRPC_PORT": "0",
        # past the transport checks (tests/unit/test_transport_settings.py) to the key ring's
        "HUBSYNC_REDIS_PASSWORD": "p",
        "HUBSYNC_GRPC_TLS_BY_MESH": "true",
        "HUBSYNC_REDIS_TLS_BY_MESH": "true",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "hubsync.auth"], env=env, capture_output=True, timeout=60, check=False
    )
    assert proc.returncode == 2, proc.stderr.decode()
    assert b"HUBSYNC_AUTH_KEYRING_FILE" in proc.stderr


def test_bad_values_exit_2_naming_the_variable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = AuthSettings.model_validate({"keyring": '{"active": "a", "keys": {"a": "c2hvcnQ="}}'})
    with pytest.raises(SystemExit) as exit_:
        load_keyring(bad, Environment.DEVELOPMENT)
    assert exit_.value.code == 2
    assert "HUBSYNC_AUTH_KEYRING: key 'a' must be 32 bytes" in capsys.readouterr().err

    missing = bad.model_copy(update={"keyring_file": tmp_path / "missing.json"})
    with pytest.raises(SystemExit):
        load_keyring(missing, Environment.PRODUCTION)
    assert "HUBSYNC_AUTH_KEYRING_FILE: cannot be read" in capsys.readouterr().err

    ring = KeyRing.generate("file-key")
    (tmp_path / "ring.json").write_text(ring.to_json())
    from_file = bad.model_copy(update={"keyring_file": tmp_path / "ring.json"})
    assert load_keyring(from_file, Environment.PRODUCTION) == ring  # the file wins

    plain = AuthSettings.model_validate({"redirect_uri": "http://example.com/oauth/callback"})
    with pytest.raises(SystemExit):
        check_settings(plain, Environment.PRODUCTION)
    assert "HUBSYNC_AUTH_REDIRECT_URI: must be an https URL" in capsys.readouterr().err
    check_settings(plain, Environment.DEVELOPMENT)


def test_development_without_key_ring_generates_one_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        ring = load_keyring(AuthSettings.model_validate({}), Environment.DEVELOPMENT)
    assert len(ring.keys[ring.active]) == 32
    assert "NO KEY RING CONFIGURED" in caplog.text
