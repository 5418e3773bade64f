"""Keys and roots for tests, made one way by every tier: numbered, distinct, typed as the seam takes them.

Derivations (documented because tests and failure messages lean on them):

* `pubkey(n)`, for 0 <= n < 2**32: n in big-endian in the first four bytes, then 44 bytes of 0xA5. Distinct keys
  for distinct numbers; keys sort as their numbers do; `key.hex()[:8]` (what the crash ledger and the history
  checker print) reads n; and no key is all zeros, so `bytes(48)` stays a key no test registers.
* `signing_root(n)`, for 0 <= n < 2**256: n in big-endian over 32 bytes, so `signing_root(0)` is the all-zero root
  (a value like any other) and roots sort as their numbers do.
* `root_for(*parts)`: the SHA-256 of the parts joined by "|", for a root named by what it signs, so that a test can
  rebuild "another root for the same message" from its parts.
* `pubkey_hex(n)` and `root_hex(n)`: the same values as 0x-prefixed lowercase hex, for the command line and
  EIP-3076 documents.

The values are typed (`sidecar.domain.Pubkey`, `SigningRoot`, `GenesisRoot`) so they go straight into a backend;
they are plain `bytes` to everything else (protos, documents).
"""

from __future__ import annotations

import hashlib

from sidecar.domain import (
    GenesisRoot,
    Pubkey,
    SigningRoot,
    valid_genesis_validators_root,
    valid_pubkey,
    valid_signing_root,
)

__all__ = [
    "ZERO_ROOT",
    "ZERO_ROOT_HEX",
    "hex0x",
    "pubkey",
    "pubkey_hex",
    "root_for",
    "root_hex",
    "signing_root",
]

PUBKEY_LIMIT = 2**32
_PUBKEY_TAIL = b"\xa5" * 44

ZERO_ROOT: GenesisRoot = valid_genesis_validators_root(bytes(32))
"""The genesis validators root of the test servers that name no network (both launchers' default)."""
ZERO_ROOT_HEX = "0x" + ZERO_ROOT.hex()


def pubkey(n: int) -> Pubkey:
    """Key number `n` (see the module doc): distinct per number, sorting as the numbers do."""
    if not 0 <= n < PUBKEY_LIMIT:
        raise ValueError(f"pubkey number {n} is outside [0, 2**32)")
    return valid_pubkey(n.to_bytes(4, "big") + _PUBKEY_TAIL)


def pubkey_hex(n: int) -> str:
    """`pubkey(n)` as 0x-prefixed hex."""
    return hex0x(pubkey(n))


def signing_root(n: int) -> SigningRoot:
    """Root number `n`: `n` in big-endian over 32 bytes (`signing_root(0)` is all zeros)."""
    return valid_signing_root(n.to_bytes(32, "big"))


def root_hex(n: int) -> str:
    """`signing_root(n)` as 0x-prefixed hex."""
    return hex0x(signing_root(n))


def root_for(*parts: object) -> SigningRoot:
    """A signing root named by its parts (SHA-256 of them joined by "|")."""
    return valid_signing_root(hashlib.sha256("|".join(map(str, parts)).encode()).digest())


def hex0x(value: bytes) -> str:
    return "0x" + value.hex()
