"""AdminService's global high watermark through a real server and a real gRPC client: Set, Get and Remove, what
the signing RPCs answer under it (the batch too), the refusals recorded in the audit trail, a restart, and bad
values refused with INVALID_ARGUMENT without changing anything."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from slashing_protection.v1 import admin_pb2, signing_pb2
from tests.service.helpers import (
    ROOT,
    assert_decision,
    probe_sequence,
    register,
    rpc_error,
    settled_decisions,
    sign_attestation,
    sign_batch,
    sign_block,
    summary,
)
from tests.support.keys import pubkey, signing_root
from tests.support.server import Running, running_server

R = signing_pb2
A, B = signing_root(0xA), signing_root(0xB)
BEYOND = R.REASON_AT_OR_BEYOND_HIGH_WATERMARK


def set_watermark(server: Running, slot: int, epoch: int) -> admin_pb2.HighWatermarkResponse:
    response: admin_pb2.HighWatermarkResponse = server.admin.SetHighWatermark(
        admin_pb2.SetHighWatermarkRequest(slot=slot, epoch=epoch)
    )
    return response


def get_watermark(server: Running) -> tuple[bool, int, int]:
    response = server.admin.GetHighWatermark(admin_pb2.GetHighWatermarkRequest())
    return response.set, response.slot, response.epoch


def remove_watermark(server: Running) -> tuple[bool, int, int]:
    response = server.admin.RemoveHighWatermark(admin_pb2.RemoveHighWatermarkRequest())
    return response.set, response.slot, response.epoch


def test_set_refuses_at_or_beyond_it_and_remove_allows_again(server: Running) -> None:
    key, other = pubkey(1), pubkey(2)
    register(server, key, other)
    assert get_watermark(server) == (False, 0, 0)
    response = set_watermark(server, 3200, 100)
    assert (response.set, response.slot, response.epoch) == (True, 3200, 100)
    assert get_watermark(server) == (True, 3200, 100)

    assert_decision(sign_block(server, key, 3199, A), R.REASON_ALLOWED_NEW)
    refused = sign_block(server, key, 3200, A)
    assert_decision(refused, BEYOND)
    assert "at or beyond the high watermark, slot 3200" in refused.message
    assert_decision(sign_attestation(server, key, 98, 99, A), R.REASON_ALLOWED_NEW)
    assert_decision(sign_attestation(server, key, 99, 100, A), BEYOND)
    assert_decision(sign_attestation(server, key, 100, 101, A), BEYOND)
    batch = sign_batch(server, [(key, 99, 101, B), (other, 98, 99, A), (pubkey(9), 1, 2, A)])
    assert [decision.reason for decision in batch] == [
        BEYOND,
        R.REASON_ALLOWED_NEW,
        R.REASON_VALIDATOR_NOT_REGISTERED,
    ]
    assert_decision(batch[0], BEYOND)

    # Recorded like every other decision: the audit trail and the counts.
    trail = settled_decisions(server, key, count=6)
    assert [record.reason for record in trail] == [
        R.REASON_ALLOWED_NEW,
        BEYOND,
        R.REASON_ALLOWED_NEW,
        BEYOND,
        BEYOND,
        BEYOND,
    ]
    assert all(record.verdict == R.VERDICT_REFUSED for record in trail if record.reason == BEYOND)
    state = summary(server, key)
    assert (state.allowed_decisions, state.refused_decisions, state.highest_slot) == (2, 4, 3199)

    assert remove_watermark(server) == (False, 0, 0)
    assert get_watermark(server) == (False, 0, 0)
    assert_decision(sign_block(server, key, 3200, A), R.REASON_ALLOWED_NEW)
    assert_decision(sign_attestation(server, key, 99, 100, A), R.REASON_ALLOWED_NEW)
    assert remove_watermark(server) == (False, 0, 0)  # nothing to remove is not an error


def test_the_watermark_survives_a_restart(tmp_path: Path) -> None:
    key = pubkey(1)
    with running_server(tmp_path / "db", ROOT) as server:
        register(server, key)
        set_watermark(server, 640, 20)
    with running_server(tmp_path / "db", ROOT) as server:
        assert get_watermark(server) == (True, 640, 20)
        assert_decision(sign_block(server, key, 640, A), BEYOND)
        assert_decision(sign_attestation(server, key, 19, 20, A), BEYOND)
        assert_decision(sign_attestation(server, key, 18, 19, A), R.REASON_ALLOWED_NEW)


@pytest.mark.parametrize(
    ("slot", "epoch", "detail"),
    [
        (2**64 - 1, 100, "slot 18446744073709551615 is out of range: it must be at least 0 and below 2^63"),
        (2**63, 2**63, "slot 9223372036854775808 is out of range"),
        (2**63 - 1, 2**63, "epoch 9223372036854775808 is out of range"),
        (3199, 3200, "slot 3199 is below its epoch 3200"),
    ],
)
def test_bad_values_are_invalid_arguments_and_change_nothing(
    server: Running, slot: int, epoch: int, detail: str
) -> None:
    key = pubkey(1)
    register(server, key)
    set_watermark(server, 3200, 100)
    before = probe_sequence(server)
    error = rpc_error(server.admin.SetHighWatermark, admin_pb2.SetHighWatermarkRequest(slot=slot, epoch=epoch))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert detail in str(error.details())
    assert probe_sequence(server) == before + 1, "the refused Set appended a record"
    assert get_watermark(server) == (True, 3200, 100)
    assert_decision(sign_block(server, key, 3200, A), BEYOND)
