"""Ingress settings: defaults, secrets from a file, and a bad value exits 2 naming the variable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hubsync.core.settings import load_settings
from hubsync.ingress.settings import IngressSettings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PORT", "WEBHOOK_SECRETS", "PUBLIC_BASE_URL", "ACCEPT_V1", "WEBHOOK_SPANS", "UVLOOP"):
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
    assert settings.uvloop


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


def test_reconcile_object_types_take_names_and_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    types = ["tickets", "0-46", "2-1001", "quotes"]
    monkeypatch.setenv("HUBSYNC_INGRESS_RECONCILE_OBJECT_TYPES", json.dumps(types))
    assert load_settings(IngressSettings).reconcile_object_types == types


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HTTP_PORT", "70000"),
        ("PUBLIC_BASE_URL", "ftp://x"),
        ("MAX_BODY_BYTES", "10"),
        ("DEDUPE_TTL_S", "abc"),
        ("WEBHOOK_SPANS", "per_request"),
        ("UVLOOP", "maybe"),
        ("RECONCILE_OBJECT_TYPES", '["tickets", "subscription"]'),  # custom objects by 2-… id only
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
    capsys: pytest.CaptureFixture[str],
) -> None:
    from redis.asyncio import Redis

    from hubsync.core.settings import CoreSettings, Environment
    from hubsync.ingress.service import build

    settings = IngressSettings.model_validate({"public_base_url": "https://hubsync.example.com"})
    redis = Redis.from_url("redis://127.0.0.1:1/0")  # never reached: start-up stops first
    with pytest.raises(SystemExit) as exit_:
        await build(CoreSettings(environment=Environment.PRODUCTION), redis, settings)
    assert exit_.value.code == 2
    assert "HUBSYNC_INGRESS_WEBHOOK_SECRETS" in capsys.readouterr().err
    await redis.aclose()


@pytest.mark.parametrize(
    ("values", "variable"),
    [
        ({"public_base_url": None}, "HUBSYNC_INGRESS_PUBLIC_BASE_URL"),  # defaults to http://<host>:<port>
        ({"public_base_url": "http://hubsync.example.com"}, "HUBSYNC_INGRESS_PUBLIC_BASE_URL"),
        ({"accept_v1": True}, "HUBSYNC_INGRESS_ACCEPT_V1"),
        ({"accept_v2": True}, "HUBSYNC_INGRESS_ACCEPT_V2"),
    ],
)
async def test_production_refuses_http_public_url_and_untimed_signatures(
    capsys: pytest.CaptureFixture[str], values: dict[str, object], variable: str
) -> None:
    from redis.asyncio import Redis

    from hubsync.core.settings import CoreSettings, Environment
    from hubsync.ingress.service import build

    settings = IngressSettings.model_validate(
        {"webhook_secrets": ["s3cr3t"], "http_port": 0, "public_base_url": "https://hubsync.example.com"}
        | values
    )
    redis = Redis.from_url("redis://127.0.0.1:1/0")  # never reached: start-up stops first
    with pytest.raises(SystemExit) as exit_:
        await build(CoreSettings(environment=Environment.PRODUCTION), redis, settings)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert variable in err and ("https" in err or "replayed" in err), err
    await redis.aclose()


def test_untimed_signatures_need_an_explicit_opt_in_in_production() -> None:
    from hubsync.core.settings import Environment
    from hubsync.ingress.service import check_settings

    opted_in = IngressSettings.model_validate(
        {
            "webhook_secrets": ["s3cr3t"],
            "public_base_url": "https://hubsync.example.com",
            "accept_v1": True,
            "untimed_signatures_in_production": True,
        }
    )
    assert check_settings(opted_in, Environment.PRODUCTION) == ["s3cr3t"]  # allowed, with a warning
    development = IngressSettings.model_validate(
        {"public_base_url": "http://127.0.0.1:8080", "accept_v1": True}
    )
    assert check_settings(development, Environment.DEVELOPMENT) == []  # development: anything
