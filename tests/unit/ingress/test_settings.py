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
    monkeypatch.setenv("HUBSYNC_INGRESS_PUBLIC_BASE_URL", "https://hubsync.example.com")
    redis = Redis.from_url("redis://127.0.0.1:1/0")  # never reached: start-up stops first
    with pytest.raises(SystemExit) as exit_:
        await build(CoreSettings(environment=Environment.PRODUCTION), redis)
    assert exit_.value.code == 2
    assert "HUBSYNC_INGRESS_WEBHOOK_SECRETS" in capsys.readouterr().err
    await redis.aclose()


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "HUBSYNC_INGRESS_PUBLIC_BASE_URL"),  # defaults to http://<host>:<port>
        ({"PUBLIC_BASE_URL": "http://hubsync.example.com"}, "HUBSYNC_INGRESS_PUBLIC_BASE_URL"),
        ({"ACCEPT_V1": "true"}, "HUBSYNC_INGRESS_ACCEPT_V1"),
        ({"ACCEPT_V2": "true"}, "HUBSYNC_INGRESS_ACCEPT_V2"),
    ],
)
async def test_production_refuses_http_public_url_and_untimed_signatures(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: dict[str, str], variable: str
) -> None:
    from redis.asyncio import Redis

    from hubsync.core.settings import CoreSettings, Environment
    from hubsync.ingress.service import build

    for name in ("PUBLIC_BASE_URL", "ACCEPT_V1", "ACCEPT_V2", "UNTIMED_SIGNATURES_IN_PRODUCTION"):
        monkeypatch.delenv(f"HUBSYNC_INGRESS_{name}", raising=False)
    monkeypatch.setenv("HUBSYNC_INGRESS_WEBHOOK_SECRETS", json.dumps(["s3cr3t"]))
    monkeypatch.setenv("HUBSYNC_INGRESS_HTTP_PORT", "0")
    monkeypatch.setenv("HUBSYNC_INGRESS_PUBLIC_BASE_URL", "https://hubsync.example.com")
    for name, value in env.items():
        monkeypatch.setenv(f"HUBSYNC_INGRESS_{name}", value)
    if not env:
        monkeypatch.delenv("HUBSYNC_INGRESS_PUBLIC_BASE_URL")
    redis = Redis.from_url("redis://127.0.0.1:1/0")  # never reached: start-up stops first
    with pytest.raises(SystemExit) as exit_:
        await build(CoreSettings(environment=Environment.PRODUCTION), redis)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert variable in err and ("https" in err or "replayed" in err), err
    await redis.aclose()


def test_untimed_signatures_need_an_explicit_opt_in_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    from hubsync.core.settings import Environment
    from hubsync.ingress.service import check_settings

    monkeypatch.setenv("HUBSYNC_INGRESS_PUBLIC_BASE_URL", "https://hubsync.example.com")
    monkeypatch.setenv("HUBSYNC_INGRESS_ACCEPT_V1", "true")
    monkeypatch.setenv("HUBSYNC_INGRESS_UNTIMED_SIGNATURES_IN_PRODUCTION", "true")
    check_settings(load_settings(IngressSettings), Environment.PRODUCTION)  # allowed, with a warning
    monkeypatch.setenv("HUBSYNC_INGRESS_PUBLIC_BASE_URL", "http://127.0.0.1:8080")
    check_settings(load_settings(IngressSettings), Environment.DEVELOPMENT)  # development: anything
