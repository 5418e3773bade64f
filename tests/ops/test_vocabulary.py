"""One vocabulary: a reason reads the same in metric labels, JSON logs, the CLI's JSON, the docs and the alert
rules, and the proto name is the only other form. (The metric label and the JSON log field are checked on a real
server in test_metrics and test_logs; this checks the table itself and everything that quotes it.)"""

from __future__ import annotations

import re

import yaml

from sidecar.audit import DecisionRecord
from sidecar.rules import Reason
from sidecar.vocabulary import REASONS, SLASHABLE_REASONS, decision_series, proto_name, spelling
from slashing_protection.v1 import signing_pb2
from tests.support.processes import REPOSITORY

SNAKE = re.compile(r"^[a-z]+(_[a-z]+)*$")


def test_every_reason_has_one_spelling_and_the_proto_name_is_its_capitalised_form() -> None:
    assert set(REASONS) == set(Reason)
    spellings = [spelling(reason) for reason in Reason]
    assert len(set(spellings)) == len(spellings)
    for reason in Reason:
        assert SNAKE.match(spelling(reason)), spelling(reason)
        assert proto_name(reason) == "REASON_" + spelling(reason).upper()
    proto_names = {name for name in signing_pb2.Reason.DESCRIPTOR.values_by_name if name != "REASON_UNSPECIFIED"}
    assert proto_names == {proto_name(reason) for reason in Reason}


def test_the_slashable_reasons_are_the_four_offences() -> None:
    assert set(SLASHABLE_REASONS) == {
        "double_proposal",
        "double_vote",
        "surrounds_recorded_vote",
        "surrounded_by_recorded_vote",
    }


def test_every_decision_series_is_a_kind_the_reason_can_happen_for() -> None:
    series = decision_series()
    assert ("block", Reason.DOUBLE_PROPOSAL) in series
    assert ("attestation", Reason.DOUBLE_VOTE) in series
    assert ("block", Reason.DOUBLE_VOTE) not in series
    assert {reason for _, reason in series} == set(Reason)


def test_the_cli_json_spells_the_reason_the_same_way() -> None:
    record = DecisionRecord(
        sequence=7,
        kind="attestation",
        pubkey=bytes(48),
        slot=None,
        source_epoch=1,
        target_epoch=2,
        signing_root=bytes(32),
        reason=Reason.SURROUNDED_BY_RECORDED_VOTE,
        unix_nanos=0,
    )
    document = record.to_json()
    assert (document["verdict"], document["reason"]) == ("refused", "surrounded_by_recorded_vote")


def test_the_operations_guide_lists_every_refusal_with_its_spelling_and_proto_name() -> None:
    text = (REPOSITORY / "docs" / "operations.md").read_text()
    for reason in Reason:
        if reason.allows:
            assert f"`{spelling(reason)}` (`{proto_name(reason)}`)" in text
        else:
            assert f"| `{spelling(reason)}` | `{proto_name(reason)}` |" in text
    # No third spelling: the bare enum name (DOUBLE_VOTE without the prefix) appears in none of the docs.
    for document in (
        REPOSITORY / "docs" / "operations.md",
        REPOSITORY / "docs" / "alerts.md",
        REPOSITORY / "README.md",
    ):
        text = document.read_text()
        for reason in Reason:
            assert re.search(rf"(?<!REASON_)\b{reason.name}\b", text) is None, (document.name, reason.name)


def test_the_alert_rules_match_exactly_the_slashable_reasons() -> None:
    rules = yaml.safe_load((REPOSITORY / "deploy" / "prometheus" / "slashing-sidecar.rules.yml").read_text())
    (rule,) = [
        r
        for g in rules["groups"]
        for r in g["rules"]
        if r.get("alert") == "SlashingSidecarSlashableMessageRefused"
    ]
    (pattern,) = re.findall(r'reason=~"([^"]+)"', rule["expr"])
    assert sorted(pattern.split("|")) == sorted(SLASHABLE_REASONS)
