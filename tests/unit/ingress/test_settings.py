"""Ingress settings: defaults, secrets from a file, and a bad value exits 2 naming the variable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hubsync.core.settings import load_settings
from hubsync.ingress.settings import IngressSettings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PORT", "WEBHOOK_SECRETS", "PUBLIC_BASE_URL", "ACCEPT_V1", "WEBHOOK_SPANS"):
        monkeypatch.delenv(f"HUBSYNC_INGRESS_{name}", raising=False)
    settings = load_settings(IngressSettings)
    assert (settings.http_host, settings.http_port, settings.public_base_url) == ("127.0.0.1", 8080, None)
    assert settings.max_body_bytes == 256 * 1024 and settings.dedupe_ttl_s > 24 * 3600
    assert (settings.max_header_bytes, settings.header_timeout_s, settings.body_timeout_s) == (
        16384,
        10.0,
        10.0,
    )
    assert settings.max_connections == 500
    assert not settings.accept_v1 and not settings.accept_v2
    assert settings.webhook_spans == "round_trip"


def test_secrets_inline_and_from_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    listed = tmp_path / "secrets.json"
    listed.write_text(json.dumps(["from-file"]))
    monkeypatch.setenv("HUBSYNC_INGRESS_WEBHOOK_SECRETS", json.dumps(["s3cr3t-inline"]))
    monkeypatch.setenv("HUBSYNC_INGRESS_WEBHOOK_SECRETS_FILE", str(listed))
    settings = load_settings(IngressSettings)
    assert settings.secrets() == ["s3cr3t-inline", "from-file"]
    assert "s3cr3t-inline" not in repr(settings)  # SecretStr
    lines = tmp_path / "secrets.txt"
    lines.write_text("one\n\n two \n")
    monkeypatch.setenv("HUBSYNC_INGRESS_WEBHOOK_SECRETS_FILE", str(lines))
    assert load_settings(IngressSettings).secrets() == ["s3cr3t-inline", "one", "two"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HTTP_PORT", "70000"),
        ("PUBLIC_BASE_URL", "ftp://x"),
        ("MAX_BODY_BYTES", "10"),
        ("DEDUPE_TTL_S", "abc"),
        ("WEBHOOK_SPANS", "per_request"),
    ],
)
def test_bad_value_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str, value: str
) -> None:
    monkeypatch.setenv(f"HUBSYNC_INGRESS_{name}", value)
    with pytest.raises(SystemExit) as exit_:
        load_settings(IngressSettings)
    assert exit_.value.code == 2
    assert f"HUBSYNC_INGRESS_{name}" in capsys.readouterr().err


async def test_production_refuses_to_start_without_a_webhook_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from redis.asyncio import Redis

    from hubsync.core.settings import CoreSettings, Environment
    from hubsync.ingress.service import build

    monkeypatch.delenv("HUBSYNC_INGRESS_WEBHOOK_SECRETS", raising=False)
    monkeypatch.delenv("HUBSYNC_INGRESS_WEBHOOK_SECRETS_FILE", raising=False)
    redis = Redis.from_url("redis://127.0.0.1:1/0")  # never reached: start-up stops first
    with pytest.raises(SystemExit) as exit_:
        await build(CoreSettings(environment=Environment.PRODUCTION), redis)
    assert exit_.value.code == 2
    assert "HUBSYNC_INGRESS_WEBHOOK_SECRETS" in capsys.readouterr().err
    await redis.aclose()
