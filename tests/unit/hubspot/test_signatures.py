"""HubSpot's published test vectors, and HubSpot's own SDK agreeing with us."""

import time

from hubspot.utils.signature import Signature

from hubsync.hubspot import signatures as sig

SECRET = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy"
BODY = b"{'example_field':'example_value'}"
URI = "https://www.example.com/webhook_uri"


def test_v1_vector() -> None:
    assert sig.sign_v1(SECRET, BODY) == "69fc6631a867edd4f9e9e627fc5c1148e3fbdd8b21837b6d2b8901c1fa57f750"


def test_v2_vector() -> None:
    assert (
        sig.sign_v2(SECRET, "POST", URI, BODY)
        == "4fe4e3a7d3cf09db53be39d0a58130e2aaba074ec123a9e355b876a689a1c383"
    )


def test_v3_vector() -> None:
    assert (
        sig.sign_v3(SECRET, "POST", URI, BODY, 1693657560000)
        == "K36dawei4A+QBNolUOqo7s91KQDWQ5MXZ/QufNYuk/Y="
    )


def test_v3_decodes_only_listed_escapes() -> None:
    uri = "https://h.example/p%3Aq?a=%20b%26c%3Dd%2Fe%40f"
    assert sig.v3_uri(uri) == "https://h.example/p:q?a=%20b%26c%3Dd/e@f"


def test_sdk_validates_our_v3_signature() -> None:
    # The SDK hashes the URI it is given as-is; HubSpot hashes the decoded form, so the SDK is
    # handed the decoded URI, as its documentation tells integrators to do.
    uri = "https://hooks.example.com/webhooks/hubspot?x=%3A%2F%20y"
    ts = str(int(time.time() * 1000))
    ours = sig.sign_v3(SECRET, "POST", uri, BODY, ts)
    assert Signature.is_valid(
        signature=ours,
        client_secret=SECRET,
        request_body=BODY.decode(),
        http_uri=sig.v3_uri(uri),
        http_method="POST",
        signature_version="v3",
        timestamp=ts,
    )
    assert not Signature.is_valid(
        signature=ours,
        client_secret=SECRET + "x",
        request_body=BODY.decode(),
        http_uri=sig.v3_uri(uri),
        signature_version="v3",
        timestamp=ts,
    )


def test_sdk_validates_our_v1_signature() -> None:
    assert Signature.is_valid(
        signature=sig.sign_v1(SECRET, BODY),
        client_secret=SECRET,
        request_body=BODY.decode(),
        signature_version="v1",
    )


def test_timestamp_window_both_ways() -> None:
    now = 1_700_000_000_000
    assert sig.timestamp_fresh(now - 299_000, now)
    assert not sig.timestamp_fresh(now - 301_000, now)
    assert not sig.timestamp_fresh(now + 301_000, now)
