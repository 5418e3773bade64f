"""Facts of the domain, written once: the sizes of Ethereum's values, the typed values that carry them, and the
sidecar's defaults.

A pubkey, a signing root or a genesis validators root is checked once, where it enters the sidecar (the
servicers, the CLI), by the constructors below, which give it its type: `Pubkey`, `SigningRoot`, `GenesisRoot`.
Everything past that boundary (the storage seam, `sidecar.backend`, and both backends) takes the typed values
and trusts them; it never checks a size again. The types are `typing.NewType`s, free at run time: a constructor
returns the very `bytes` object it checked, without even calling the NewType (a Python call per value, measurable
on the hot path), so the hot path pays for one length check and nothing more.

Every module above ``sidecar.storage`` takes these from here. ``sidecar.storage`` does not import this module: it
knows nothing of slashing, so it learns sizes as parameters or keeps its own framing constants (such as the
32-byte identity field of a checkpoint header); the one default it owns, the segment size, is re-exported here
rather than written twice.

``interchange`` (the EIP-3076 format alone) keeps its own ``PUBKEY_BYTES``/``ROOT_BYTES`` so that it stays usable
without the rest of the sidecar; so does the client library (``sidecar.client``), whose checks run in the
caller's process before anything is sent and which must not import the storage package.
"""

from __future__ import annotations

from typing import NewType

from sidecar.errors import InvalidRequestError
from sidecar.storage.writer import DEFAULT_SEGMENT_BYTES

__all__ = [
    "DEFAULT_HISTORY_WINDOW_EPOCHS",
    "DEFAULT_SEGMENT_BYTES",
    "PUBKEY_SIZE",
    "ROOT_SIZE",
    "SLOTS_PER_EPOCH",
    "GenesisRoot",
    "Pubkey",
    "SigningRoot",
    "valid_genesis_validators_root",
    "valid_pubkey",
    "valid_signing_root",
]

PUBKEY_SIZE = 48
"""A BLS12-381 public key, compressed."""
ROOT_SIZE = 32
"""A signing root or the genesis validators root (SSZ hash tree root)."""
SLOTS_PER_EPOCH = 32
"""Mainnet's (and every supported network's) slots per epoch."""

DEFAULT_HISTORY_WINDOW_EPOCHS = 64
"""How far back each validator's records are kept: 64 epochs (~6.8 hours) of attestations is about 4 KiB per
validator, so 100,000 validators stay well under 1 GB. Pruning only ever adds refusals (see ``sidecar.history``),
so the window trades memory for the ability to sign old messages out of order, never safety."""

Pubkey = NewType("Pubkey", bytes)
"""A validator's public key, `PUBKEY_SIZE` bytes: made by `valid_pubkey` (or read back from storage, which only
ever held valid ones)."""
SigningRoot = NewType("SigningRoot", bytes)
"""The signing root of a block or an attestation, `ROOT_SIZE` bytes: made by `valid_signing_root`."""
GenesisRoot = NewType("GenesisRoot", bytes)
"""The genesis validators root naming a chain, `ROOT_SIZE` bytes: made by `valid_genesis_validators_root`."""


def valid_pubkey(value: bytes, field: str = "pubkey") -> Pubkey:
    """`value` as a `Pubkey` once its size is checked; raises InvalidRequestError naming `field` (with any prefix
    the caller gives it, such as ``attestations[3].pubkey``) otherwise."""
    if len(value) != PUBKEY_SIZE:
        raise InvalidRequestError(f"{field} must be {PUBKEY_SIZE} bytes, got {len(value)}")
    return value  # type: ignore[return-value]  # checked: a Pubkey (see the module doc)


def valid_signing_root(value: bytes, field: str = "signing_root") -> SigningRoot:
    """`value` as a `SigningRoot` once its size is checked; raises InvalidRequestError naming `field` otherwise."""
    if len(value) != ROOT_SIZE:
        raise InvalidRequestError(f"{field} must be {ROOT_SIZE} bytes, got {len(value)}")
    return value  # type: ignore[return-value]  # checked: a SigningRoot (see the module doc)


def valid_genesis_validators_root(value: bytes, field: str = "genesis_validators_root") -> GenesisRoot:
    """`value` as a `GenesisRoot` once its size is checked; raises InvalidRequestError naming `field` otherwise."""
    if len(value) != ROOT_SIZE:
        raise InvalidRequestError(f"{field} must be {ROOT_SIZE} bytes, got {len(value)}")
    return value  # type: ignore[return-value]  # checked: a GenesisRoot (see the module doc)
