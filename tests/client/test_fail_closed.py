"""Anything unexpected reads as "do not sign": decisions the sidecar never sends, served by a real (scripted)
gRPC server, and the translation itself, table by table."""

from __future__ import annotations

import pytest

from sidecar.client import (
    Attestation,
    Reason,
    SidecarClient,
    SidecarProtocolError,
    decision_from_proto,
)
from slashing_protection.v1 import signing_pb2
from tests.client.fake import Script, fake_sidecar
from tests.service.helpers import ROOT
from tests.support.keys import pubkey, signing_root

ALLOWED, REFUSED = signing_pb2.VERDICT_ALLOWED, signing_pb2.VERDICT_REFUSED


def _decision(verdict: int, reason: int) -> signing_pb2.SigningDecision:
    return signing_pb2.SigningDecision(verdict=verdict, reason=reason, message="scripted", sequence=7)  # type: ignore[arg-type]


UNEXPECTED = [
    pytest.param(_decision(ALLOWED, signing_pb2.REASON_DOUBLE_VOTE), id="allowed-with-a-refusal-reason"),
    pytest.param(_decision(REFUSED, signing_pb2.REASON_ALLOWED_NEW), id="refused-with-an-allowing-reason"),
    pytest.param(_decision(signing_pb2.VERDICT_UNSPECIFIED, signing_pb2.REASON_ALLOWED_NEW), id="no-verdict"),
    pytest.param(_decision(ALLOWED, signing_pb2.REASON_UNSPECIFIED), id="no-reason"),
    pytest.param(_decision(ALLOWED, 99), id="unknown-reason"),
    pytest.param(_decision(99, signing_pb2.REASON_ALLOWED_NEW), id="unknown-verdict"),
    pytest.param(None, id="no-decision-at-all"),
]


@pytest.mark.parametrize("decision", UNEXPECTED)
def test_unexpected_decisions_are_not_allowed(decision: signing_pb2.SigningDecision | None) -> None:
    with (
        fake_sidecar(Script(decision=decision)) as address,
        SidecarClient(address, genesis_validators_root=ROOT) as client,
    ):
        answers = [
            client.check_block(pubkey(1), 1, signing_root(1)),
            client.check_attestation(pubkey(1), 1, 2, signing_root(1)),
            *client.check_attestations([Attestation(pubkey(1), 1, 2, signing_root(1))]),
        ]
    for answer in answers:
        assert answer.allowed is False
        assert answer.reason is None
        assert answer.message.startswith("do not sign: unexpected decision from the server")


def test_expected_decisions_translate_exactly() -> None:
    for reason in Reason:
        verdict = ALLOWED if reason.allows else REFUSED
        typed = decision_from_proto(_decision(verdict, int(reason)))
        assert (typed.allowed, typed.reason, typed.message, typed.sequence) == (
            reason.allows,
            reason,
            "scripted",
            7,
        )
        assert signing_pb2.Reason.Name(int(reason)) == f"REASON_{reason.name}"


def test_a_batch_answered_with_the_wrong_count_is_an_error() -> None:
    allowed = _decision(ALLOWED, signing_pb2.REASON_ALLOWED_NEW)
    with (
        fake_sidecar(Script(decision=allowed, batch_decisions=[allowed])) as address,
        SidecarClient(address, genesis_validators_root=ROOT) as client,
    ):
        items = [Attestation(pubkey(n), 1, 2, signing_root(1)) for n in (1, 2)]
        with pytest.raises(SidecarProtocolError, match="a batch of 2 attestations got 1 decisions"):
            client.check_attestations(items)
