#!/usr/bin/env python3
"""An independent implementation of wireseal's IPsec derivations (keymgr/src/esp.rs,
core/src/ipsec.rs) with Python's `cryptography` and `hashlib`, for the
cross-check in keymgr/tests/esp_vectors.rs.

stdin: one JSON object per line,
  {"own": <private key hex>, "other": <public key hex>, "sender_is_own": bool,
   "epoch": int, "attempt": int}
stdout: one JSON object per line,
  {"own_public": hex, "spi": int, "key": hex}
where spi is the SPI candidate `attempt` for the SA (receiver, sender, epoch) and
key the SA's 36-byte rfc4106(gcm(aes)) key for that SPI.
"""
import hashlib
import json
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def candidate_spi(receiver: bytes, sender: bytes, epoch: int, attempt: int) -> int:
    digest = hashlib.sha256(
        b"wireseal esp spi v1" + receiver + sender + epoch.to_bytes(4, "big") + attempt.to_bytes(4, "big")
    ).digest()
    raw = int.from_bytes(digest[:4], "big")
    return (raw & 0x7FFFFFFF) | ((epoch & 1) << 31)


def esp_key(own: X25519PrivateKey, other: bytes, sender: bytes, receiver: bytes, epoch: int, spi: int) -> bytes:
    shared = own.exchange(X25519PublicKey.from_public_bytes(other))
    info = b"wireseal esp v1 sa" + sender + receiver + epoch.to_bytes(4, "big") + spi.to_bytes(4, "big")
    return HKDF(algorithm=hashes.SHA256(), length=36, salt=b"wireseal esp v1", info=info).derive(shared)


for line in sys.stdin:
    case = json.loads(line)
    own = X25519PrivateKey.from_private_bytes(bytes.fromhex(case["own"]))
    own_public = own.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    other = bytes.fromhex(case["other"])
    sender, receiver = (own_public, other) if case["sender_is_own"] else (other, own_public)
    spi = candidate_spi(receiver, sender, case["epoch"], case["attempt"])
    key = esp_key(own, other, sender, receiver, case["epoch"], spi)
    print(json.dumps({"own_public": own_public.hex(), "spi": spi, "key": key.hex()}), flush=True)
