"""Unit tests of the sandbox's pieces: signatures, config loading, search filters, rate limiter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hubsync.sandbox import SandboxConfig
from hubsync.sandbox.errors import ApiError
from hubsync.sandbox.properties import default_properties
from hubsync.sandbox.ratelimit import RateLimiter
from hubsync.sandbox.search import SearchError, compile_search, parse_datetime_ms
from hubsync.sandbox.webhooks import sign_v1, sign_v2, sign_v3, v3_uri

SECRET = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy"
BODY = "{'example_field':'example_value'}"
URI = "https://www.example.com/webhook_uri"


def test_signature_test_vectors_of_the_facts_file() -> None:
    assert sign_v1(SECRET, BODY) == "69fc6631a867edd4f9e9e627fc5c1148e3fbdd8b21837b6d2b8901c1fa57f750"
    assert (
        sign_v2(SECRET, "POST", URI, BODY)
        == "4fe4e3a7d3cf09db53be39d0a58130e2aaba074ec123a9e355b876a689a1c383"
    )
    assert sign_v3(SECRET, "POST", URI, BODY, 1693657560000) == "K36dawei4A+QBNolUOqo7s91KQDWQ5MXZ/QufNYuk/Y="


def test_v3_uri_decodes_exactly_the_listed_escapes() -> None:
    raw = "https://h/p?a=%3A%2F%3F%40%21%24%27%28%29%2A%2C%3B&b=%20%26%3D"
    assert v3_uri(raw) == "https://h/p?a=:/?@!$'()*,;&b=%20%26%3D"


def test_config_defaults_are_deterministic() -> None:
    cfg = SandboxConfig()
    assert cfg.portals[0].hub_id == 12345 and cfg.portals[0].burst == 100 and cfg.portals[0].daily == 250_000
    assert cfg.apps[0].app_id == 1001
    assert cfg.apps[0].client_id == "hubsync-sandbox-client-id"
    assert cfg.portals[0].private_apps[0].token == "pat-na1-00000000-0000-4000-8000-000000012345"
    assert cfg.token_ttl_s == 1800
    assert len(cfg.webhook_retry_schedule_s) == 10
    assert 23 * 3600 < sum(cfg.webhook_retry_schedule_s) <= 24 * 3600


def test_config_loads_yaml_and_json(tmp_path: Path) -> None:
    y = tmp_path / "s.yaml"
    y.write_text("portals:\n  - hub_id: 7\n    plan: enterprise\ntoken_ttl_s: 60\n")
    cfg = SandboxConfig.load(y)
    assert cfg.portals[0].hub_id == 7 and cfg.portals[0].burst == 190 and cfg.portals[0].daily == 1_000_000
    j = tmp_path / "s.json"
    j.write_text(json.dumps({"apps": [{"app_id": 5, "webhooks": {"target_url": "http://127.0.0.1:1/x"}}]}))
    assert SandboxConfig.load(j).apps[0].webhooks.target_url == "http://127.0.0.1:1/x"
    j.write_text(json.dumps({"no_such_option": 1}))
    with pytest.raises(ValueError):
        SandboxConfig.load(j)


def test_datetime_parsing() -> None:
    assert parse_datetime_ms("1700000000000") == 1_700_000_000_000
    assert parse_datetime_ms("2023-11-14T22:13:20Z") == 1_700_000_000_000
    assert parse_datetime_ms("2023-11-14") == 1_699_920_000_000
    assert parse_datetime_ms("not a date") is None


def test_search_validation() -> None:
    props = default_properties("contacts")
    with pytest.raises(SearchError):
        compile_search({"limit": 201}, props, "contacts")
    with pytest.raises(SearchError):
        compile_search({"after": "10000", "limit": 1}, props, "contacts")
    with pytest.raises(SearchError):
        compile_search(
            {"filterGroups": [{"filters": [{"propertyName": "nope", "operator": "EQ", "value": "x"}]}]},
            props,
            "contacts",
        )
    spec = compile_search(
        {
            "filterGroups": [
                {"filters": [{"propertyName": "email", "operator": "CONTAINS_TOKEN", "value": "ada*"}]}
            ]
        },
        props,
        "contacts",
    )
    assert spec["predicate"]({"email": "ada@x.com"}) is True
    assert spec["predicate"]({"email": "bob@x.com"}) is False


def test_rolling_window_and_daily_budget() -> None:
    rl = RateLimiter()
    for n in range(3):
        h = rl.check_api(1, "private", 3, 5, now=1_000 + n, oauth=False)
    assert h["X-HubSpot-RateLimit-Remaining"] == "0"
    with pytest.raises(ApiError) as exc:
        rl.check_api(1, "private", 3, 5, now=1_010, oauth=False)
    assert exc.value.status == 429 and exc.value.body["policyName"] == "TEN_SECONDLY_ROLLING"
    # 10 s after the first call, one slot is free again.
    rl.check_api(1, "private", 3, 5, now=11_000, oauth=False)
    rl.check_api(1, "private", 3, 5, now=11_002, oauth=False)
    with pytest.raises(ApiError) as exc:
        rl.check_api(1, "private", 3, 5, now=30_000, oauth=False)
    assert exc.value.body["policyName"] == "DAILY"
    # Another app in the same portal has its own burst bucket but shares the daily budget.
    with pytest.raises(ApiError):
        rl.check_api(1, "oauth:1001", 3, 5, now=30_000, oauth=True)


def test_clock_freeze_advance_unfreeze() -> None:
    import time

    from hubsync.sandbox.store import Clock

    c = Clock()
    c.freeze()
    t0 = c.now_ms()
    time.sleep(0.02)
    assert c.now_ms() == t0
    c.advance(1.5)
    assert c.now_ms() == t0 + 1500
    c.unfreeze()
    assert 0 <= c.now_ms() - (t0 + 1500) < 50  # continues from where it stood
    c.reset()
    assert abs(c.now_ms() - time.time() * 1000) < 50
