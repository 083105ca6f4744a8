"""The key ring that seals secrets at rest: AES-256-GCM, key id in the ciphertext, portal as AAD.

Sealed layout (bytes)::

    0x01 | len(kid) (1 byte) | kid (ASCII) | nonce (12 bytes) | ciphertext + 16-byte tag

The key id travels with the ciphertext so any key in the ring can open it, while new secrets are
sealed under the active key: rotation is "add a key, make it active, re-encrypt, retire the old
one" with every replica able to read both generations in between. The portal id is the associated
data, so a sealed blob copied to another portal's record fails to open.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["KeyRing", "KeyRingError", "SealError", "key_id_of"]

_VERSION = 1
_NONCE = 12
_KID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class KeyRingError(ValueError):
    """The key ring configuration is unusable (the message names what is wrong, never a key)."""


class SealError(Exception):
    """A sealed value cannot be opened: unknown key id, wrong portal, or tampered bytes."""


@dataclass(frozen=True)
class KeyRing:
    """Named 32-byte keys, one of them active."""

    active: str
    keys: dict[str, bytes]

    def __post_init__(self) -> None:
        """Check the ring: at least one key, valid ids, 32-byte keys, the active one present."""
        if not self.keys:
            raise KeyRingError("no keys")
        for kid, key in self.keys.items():
            if not _KID.match(kid):
                raise KeyRingError(f"key id {kid!r} must be 1-64 of A-Z a-z 0-9 . _ -")
            if len(key) != 32:
                raise KeyRingError(f"key {kid!r} must be 32 bytes (AES-256), base64-encoded")
        if self.active not in self.keys:
            raise KeyRingError(f"active key {self.active!r} is not in keys")

    @classmethod
    def from_json(cls, raw: str) -> KeyRing:
        """Parse ``{"active": kid, "keys": {kid: base64}}``; raise KeyRingError saying what is wrong."""
        try:
            data = json.loads(raw)
        except ValueError:
            raise KeyRingError("not valid JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("keys"), dict):
            raise KeyRingError('must be {"active": "<kid>", "keys": {"<kid>": "<base64>"}}')
        keys: dict[str, bytes] = {}
        for kid, encoded in data["keys"].items():
            if not isinstance(encoded, str):
                raise KeyRingError(f"key {kid!r} must be a base64 string")
            try:
                keys[str(kid)] = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise KeyRingError(f"key {kid!r} is not valid base64") from None
        return cls(active=str(data.get("active", "")), keys=keys)

    @classmethod
    def generate(cls, kid: str = "dev") -> KeyRing:
        """Generate a fresh single-key ring (development only: it dies with the process)."""
        return cls(active=kid, keys={kid: AESGCM.generate_key(bit_length=256)})

    def to_json(self) -> str:
        """Serialize the ring in the form :meth:`from_json` reads."""
        return json.dumps(
            {"active": self.active, "keys": {k: base64.b64encode(v).decode() for k, v in self.keys.items()}}
        )

    def seal(self, portal_id: int, plaintext: bytes) -> bytes:
        """Encrypts under the active key, bound to ``portal_id``."""
        kid = self.active.encode()
        nonce = os.urandom(_NONCE)
        body = AESGCM(self.keys[self.active]).encrypt(nonce, plaintext, _aad(portal_id))
        return bytes([_VERSION, len(kid)]) + kid + nonce + body

    def open(self, portal_id: int, sealed: bytes) -> bytes:
        """Decrypts a value sealed by :meth:`seal` under any key of the ring."""
        kid = key_id_of(sealed)
        key = self.keys.get(kid)
        if key is None:
            raise SealError(f"sealed with key {kid!r}, which is not in the key ring")
        start = 2 + len(kid)
        nonce, body = sealed[start : start + _NONCE], sealed[start + _NONCE :]
        try:
            return AESGCM(key).decrypt(nonce, body, _aad(portal_id))
        except InvalidTag:
            raise SealError("sealed value does not open (tampered, or another portal's)") from None


def key_id_of(sealed: bytes) -> str:
    """Return the key id a sealed value names."""
    if len(sealed) < 2 or sealed[0] != _VERSION:
        raise SealError("unknown sealed format")
    n = sealed[1]
    if len(sealed) < 2 + n + _NONCE + 16:
        raise SealError("sealed value is truncated")
    return sealed[2 : 2 + n].decode("ascii", "replace")


def _aad(portal_id: int) -> bytes:
    return f"hubsync-auth:portal:{portal_id}".encode()
