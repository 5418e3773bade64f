"""Facts of the domain, written once: the sizes of Ethereum's values and the sidecar's defaults.

Every module above ``sidecar.storage`` takes these from here. ``sidecar.storage`` does not import this module: it
knows nothing of slashing, so it learns sizes as parameters or keeps its own framing constants (such as the
32-byte identity field of a checkpoint header); the one default it owns, the segment size, is re-exported here
rather than written twice.

``interchange`` (the EIP-3076 format alone) keeps its own ``PUBKEY_BYTES``/``ROOT_BYTES`` so that it stays usable
without the rest of the sidecar.
"""

from __future__ import annotations

from sidecar.storage.writer import DEFAULT_SEGMENT_BYTES

__all__ = [
    "DEFAULT_HISTORY_WINDOW_EPOCHS",
    "DEFAULT_SEGMENT_BYTES",
    "PUBKEY_SIZE",
    "ROOT_SIZE",
    "SLOTS_PER_EPOCH",
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
