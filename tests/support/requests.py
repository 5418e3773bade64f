"""The contract's request messages, built one way for every tier that talks gRPC (service, ops, client, interop,
crash, cli).

The builders take plain `bytes` on purpose: tests send malformed values (a 47-byte key, an empty root) to see
them refused. The genesis validators root defaults to `tests.support.keys.ZERO_ROOT`, the root both launchers
give a server that names no network; a tier whose servers use another root passes it.
"""

from __future__ import annotations

from collections.abc import Iterable

from slashing_protection.v1 import admin_pb2, signing_pb2
from tests.support.keys import ZERO_ROOT

__all__ = ["AttestationItem", "attestation_request", "batch_request", "block_request", "register_request"]

AttestationItem = tuple[bytes, int, int, bytes]
"""One attestation as the batch builder takes it: (pubkey, source_epoch, target_epoch, signing_root)."""


def block_request(
    pubkey: bytes, slot: int, signing_root: bytes, genesis_validators_root: bytes = ZERO_ROOT
) -> signing_pb2.CheckAndRecordBlockRequest:
    return signing_pb2.CheckAndRecordBlockRequest(
        pubkey=pubkey, slot=slot, signing_root=signing_root, genesis_validators_root=genesis_validators_root
    )


def attestation_request(
    pubkey: bytes,
    source_epoch: int,
    target_epoch: int,
    signing_root: bytes,
    genesis_validators_root: bytes = ZERO_ROOT,
) -> signing_pb2.CheckAndRecordAttestationRequest:
    return signing_pb2.CheckAndRecordAttestationRequest(
        pubkey=pubkey,
        source_epoch=source_epoch,
        target_epoch=target_epoch,
        signing_root=signing_root,
        genesis_validators_root=genesis_validators_root,
    )


def batch_request(
    items: Iterable[AttestationItem], genesis_validators_root: bytes = ZERO_ROOT
) -> signing_pb2.CheckAndRecordAttestationsRequest:
    """A batch of `items`, every one naming `genesis_validators_root`."""
    return signing_pb2.CheckAndRecordAttestationsRequest(
        attestations=[attestation_request(*item, genesis_validators_root) for item in items]
    )


def register_request(*pubkeys: bytes) -> admin_pb2.RegisterValidatorsRequest:
    return admin_pb2.RegisterValidatorsRequest(pubkeys=list(pubkeys))
