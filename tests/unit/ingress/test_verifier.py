"""WebhookVerifier: HubSpot's vectors, several secrets, the window both ways, v1/v2 only when on."""

from __future__ import annotations

import pytest

from hubsync.hubspot.signatures import sign_v1, sign_v2, sign_v3
from hubsync.ingress.verifier import SignatureRejected, WebhookVerifier

SECRET = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy"
BODY = b"{'example_field':'example_value'}"
URI = "https://www.example.com/webhook_uri"
TS = 1693657560000


def verifier(*secrets: str, v1: bool = False, v2: bool = False, now: int = TS) -> WebhookVerifier:
    return WebhookVerifier(list(secrets) or [SECRET], accept_v1=v1, accept_v2=v2, now_ms=lambda: now)


def test_hubspot_v3_vector_is_accepted() -> None:
    headers = {
        "x-hubspot-signature-v3": "K36dawei4A+QBNolUOqo7s91KQDWQ5MXZ/QufNYuk/Y=",
        "x-hubspot-request-timestamp": str(TS),
    }
    assert verifier().verify("POST", URI, BODY, headers).version == "v3"


def test_any_active_secret_is_accepted() -> None:
    headers = {
        "x-hubspot-signature-v3": sign_v3("new", "POST", URI, BODY, TS),
        "x-hubspot-request-timestamp": str(TS),
    }
    assert verifier("old", "new").verify("POST", URI, BODY, headers).version == "v3"
    with pytest.raises(SignatureRejected) as err:
        verifier("old").verify("POST", URI, BODY, headers)
    assert err.value.reason == "bad_signature"


@pytest.mark.parametrize(
    ("offset", "ok"), [(-300_000, True), (300_000, True), (-300_001, False), (300_001, False)]
)
def test_window_is_five_minutes_both_ways(offset: int, ok: bool) -> None:
    ts = TS + offset
    headers = {
        "x-hubspot-signature-v3": sign_v3(SECRET, "POST", URI, BODY, ts),
        "x-hubspot-request-timestamp": str(ts),
    }
    if ok:
        verifier().verify("POST", URI, BODY, headers)
    else:
        with pytest.raises(SignatureRejected) as err:
            verifier().verify("POST", URI, BODY, headers)
        assert err.value.reason == "stale_timestamp"


@pytest.mark.parametrize("timestamp", [None, "", "abc", "-5", "1" * 40, "1.5"])
def test_bad_timestamps_are_rejected(timestamp: str | None) -> None:
    headers = {"x-hubspot-signature-v3": sign_v3(SECRET, "POST", URI, BODY, TS)}
    if timestamp is not None:
        headers["x-hubspot-request-timestamp"] = timestamp
    with pytest.raises(SignatureRejected):
        verifier().verify("POST", URI, BODY, headers)


def test_v3_uri_is_decoded_as_hubspot_does() -> None:
    sent = "https://h.example/webhooks?a=%3A%2F&b=%20c"
    headers = {
        "x-hubspot-signature-v3": sign_v3(SECRET, "POST", sent, BODY, TS),
        "x-hubspot-request-timestamp": str(TS),
    }
    verifier().verify("POST", sent, BODY, headers)
    with pytest.raises(SignatureRejected):
        verifier().verify("POST", "https://h.example/webhooks?a=%3A%2F&b=+c", BODY, headers)


def test_v1_and_v2_only_when_configured() -> None:
    v1 = {"x-hubspot-signature-version": "v1", "x-hubspot-signature": sign_v1(SECRET, BODY)}
    v2 = {"x-hubspot-signature-version": "v2", "x-hubspot-signature": sign_v2(SECRET, "POST", URI, BODY)}
    assert v1["x-hubspot-signature"] == "69fc6631a867edd4f9e9e627fc5c1148e3fbdd8b21837b6d2b8901c1fa57f750"
    for headers in (v1, v2):
        with pytest.raises(SignatureRejected) as err:
            verifier().verify("POST", URI, BODY, headers)
        assert err.value.reason == "missing_signature"
    assert verifier(v1=True).verify("POST", URI, BODY, v1).version == "v1"
    assert verifier(v2=True).verify("POST", URI, BODY, v2).version == "v2"
    with pytest.raises(SignatureRejected):
        verifier(v1=True).verify("POST", URI, BODY + b" ", v1)


def test_no_secret_configured_rejects_everything() -> None:
    headers = {
        "x-hubspot-signature-v3": sign_v3(SECRET, "POST", URI, BODY, TS),
        "x-hubspot-request-timestamp": str(TS),
    }
    with pytest.raises(SignatureRejected) as err:
        WebhookVerifier([], now_ms=lambda: TS).verify("POST", URI, BODY, headers)
    assert err.value.reason == "no_secret"
