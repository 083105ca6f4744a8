"""The key ring: AES-256-GCM with the key id in the ciphertext and the portal as associated data."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hubsync.auth.keyring import KeyRing, KeyRingError, SealError, key_id_of

RING = KeyRing.generate("k1")


@given(st.binary(max_size=2048), st.integers(min_value=1, max_value=2**53))
def test_seal_open_round_trip(plaintext: bytes, portal: int) -> None:
    sealed = RING.seal(portal, plaintext)
    assert RING.open(portal, sealed) == plaintext
    assert key_id_of(sealed) == "k1"
    if len(plaintext) >= 8:
        assert plaintext not in sealed


def test_each_seal_uses_a_fresh_nonce() -> None:
    assert RING.seal(1, b"same") != RING.seal(1, b"same")


def test_sealed_value_is_bound_to_its_portal() -> None:
    sealed = RING.seal(12345, b"secret")
    with pytest.raises(SealError):
        RING.open(12346, sealed)


def test_tampering_is_detected() -> None:
    sealed = bytearray(RING.seal(1, b"secret"))
    sealed[-1] ^= 1
    with pytest.raises(SealError):
        RING.open(1, bytes(sealed))
    with pytest.raises(SealError):
        RING.open(1, b"\x02garbage")
    with pytest.raises(SealError):
        RING.open(1, bytes(sealed[:10]))


def test_rotation_reads_old_keys_and_seals_under_the_active_one() -> None:
    old = KeyRing.generate("k1")
    new_key = KeyRing.generate("k2").keys["k2"]
    both = KeyRing(active="k2", keys={**old.keys, "k2": new_key})
    sealed_old = old.seal(7, b"token")
    assert both.open(7, sealed_old) == b"token"
    resealed = both.seal(7, b"token")
    assert key_id_of(resealed) == "k2"
    with pytest.raises(SealError, match="not in the key ring"):
        old.open(7, resealed)


def test_json_round_trip_and_errors_name_no_key_material() -> None:
    assert KeyRing.from_json(RING.to_json()) == RING
    key = base64.b64encode(b"x" * 32).decode()
    cases = {
        "not json": "not valid JSON",
        json.dumps({"active": "a"}): "must be",
        json.dumps({"active": "b", "keys": {"a": key}}): "not in keys",
        json.dumps({"active": "a", "keys": {"a": base64.b64encode(b"short").decode()}}): "32 bytes",
        json.dumps({"active": "a", "keys": {"a": "!!!"}}): "not valid base64",
        json.dumps({"active": "a b", "keys": {"a b": key}}): "key id",
        json.dumps({"active": "", "keys": {}}): "no keys",
    }
    for raw, message in cases.items():
        with pytest.raises(KeyRingError, match=message) as err:
            KeyRing.from_json(raw)
        assert key not in str(err.value)
