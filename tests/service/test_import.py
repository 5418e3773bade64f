"""Import and export over gRPC while serving: per-key outcomes, distinct-key counts, idempotent re-import,
registration by import, the round trip, and a response that stays small whatever the document's size."""

from __future__ import annotations

import json
from pathlib import Path

from sidecar.store import Strategy
from slashing_protection.v1 import interchange_pb2, signing_pb2
from tests.service.helpers import (
    ROOT,
    Entry,
    assert_decision,
    export_document,
    import_chunks,
    import_document,
    interchange_document,
    register,
    sign_attestation,
    sign_block,
    summary,
)
from tests.support.keys import hex0x, pubkey, signing_root
from tests.support.server import Running, running_server

A, B, C = signing_root(0xA), signing_root(0xB), signing_root(0xC)
R = signing_pb2
DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024


def statuses(response: interchange_pb2.ImportInterchangeResponse) -> dict[bytes, int]:
    listed: dict[bytes, int] = {result.pubkey: result.status for result in response.results}
    assert len(listed) == len(response.results), "a key listed twice"
    assert all(result.message for result in response.results)
    return listed


def test_outcome_per_key_in_complete_strategy(server: Running) -> None:
    fresh, merged, unchanged, slashable, registered_only = (pubkey(i) for i in range(1, 6))
    register(server, merged, unchanged, slashable, registered_only)
    sign_block(server, merged, 10, A)
    sign_block(server, unchanged, 10, A)
    sign_attestation(server, unchanged, 1, 2, A)
    sign_attestation(server, slashable, 3, 4, A)
    document = interchange_document(
        [
            Entry(fresh, blocks=((5, A), (6, None)), attestations=((1, 2, A),)),
            Entry(merged, blocks=((20, B),)),
            Entry(unchanged, blocks=((10, A),), attestations=((1, 2, A),)),
            Entry(slashable, attestations=((2, 5, B),)),  # surrounds (3, 4)
            Entry(registered_only, blocks=((7, C),)),
        ]
    )

    response = import_document(server, document)

    assert response.validators == 5
    assert response.imported == 2  # the new key, and the registered key that had no history
    assert response.results_omitted == 0
    assert statuses(response) == {
        merged: interchange_pb2.IMPORT_STATUS_MERGED,
        unchanged: interchange_pb2.IMPORT_STATUS_UNCHANGED,
        slashable: interchange_pb2.IMPORT_STATUS_IMPORTED_SLASHABLE_DATA,
    }
    assert response.sequence > 0
    # What was imported now protects: the imported block, the merged block, the slashable vote.
    assert_decision(sign_block(server, fresh, 5, B), R.REASON_DOUBLE_PROPOSAL)
    assert_decision(sign_block(server, fresh, 6, B), R.REASON_DOUBLE_PROPOSAL)  # unknown root: never a repeat
    assert_decision(sign_block(server, fresh, 5, A), R.REASON_ALLOWED_REPEAT)
    assert_decision(sign_block(server, merged, 20, C), R.REASON_DOUBLE_PROPOSAL)
    # EIP-3076 condition 2 for the imported file: nothing at or below its lowest slot, whatever was signed here.
    assert_decision(sign_block(server, merged, 15, C), R.REASON_SLOT_AT_OR_BELOW_LOWER_BOUND)
    assert_decision(sign_block(server, merged, 21, C), R.REASON_ALLOWED_NEW)
    assert summary(server, slashable).attestation_count == 2
    assert_decision(sign_attestation(server, slashable, 2, 5, C), R.REASON_DOUBLE_VOTE)
    assert_decision(sign_attestation(server, slashable, 2, 5, B), R.REASON_ALLOWED_REPEAT)  # the imported vote
    assert_decision(sign_attestation(server, slashable, 1, 6, A), R.REASON_SURROUNDS_RECORDED_VOTE)
    assert_decision(sign_block(server, registered_only, 7, C), R.REASON_ALLOWED_REPEAT)


def test_import_registers_its_keys(server: Running) -> None:
    key = pubkey(1)
    assert summary(server, key).registered is False
    response = import_document(server, interchange_document([Entry(key)]))  # no records at all
    assert (response.validators, response.imported, list(response.results)) == (1, 1, [])
    assert summary(server, key).registered is True
    assert_decision(sign_block(server, key, 1, A), R.REASON_ALLOWED_NEW)


def test_validators_counts_distinct_keys(server: Running) -> None:
    """One key in three elements of `data` is one validator, its records merged."""
    a, b = pubkey(1), pubkey(2)
    document = interchange_document(
        [Entry(a, blocks=((5, A),)), Entry(b, blocks=((5, A),)), Entry(a, blocks=((6, B),)), Entry(a)]
    )
    response = import_document(server, document)
    assert response.validators == 2
    assert response.imported + len(response.results) + response.results_omitted == 2
    assert summary(server, a).block_count == 2
    assert_decision(sign_block(server, a, 6, C), R.REASON_DOUBLE_PROPOSAL)


def test_reimport_is_idempotent(server: Running) -> None:
    keys = [pubkey(i) for i in range(1, 4)]
    document = interchange_document(
        [
            Entry(keys[0], blocks=((5, A), (9, B)), attestations=((1, 2, A), (2, 3, None))),
            Entry(keys[1], attestations=((0, 1, A),)),
            Entry(keys[2], blocks=((1, None),)),
        ]
    )
    first = import_document(server, document)
    exported = export_document(server)
    second = import_document(server, document)
    third = import_document(server, exported)

    assert first.imported == 3
    for again in (second, third):
        assert again.validators == 3
        assert again.imported == 0
        assert set(statuses(again).values()) == {interchange_pb2.IMPORT_STATUS_UNCHANGED}
        assert again.sequence > first.sequence
    assert export_document(server) == exported


def test_export_round_trip_through_a_fresh_server(server: Running, tmp_path: Path) -> None:
    a, b = pubkey(1), pubkey(2)
    register(server, a, b)
    sign_block(server, a, 10, A)
    sign_attestation(server, a, 1, 2, A)
    sign_attestation(server, b, 0, 7, B)
    sign_block(server, a, 10, B)  # refused, not exported
    exported = export_document(server)
    document = json.loads(exported)
    assert document["metadata"] == {"interchange_format_version": "5", "genesis_validators_root": hex0x(ROOT)}
    assert {entry["pubkey"] for entry in document["data"]} == {hex0x(a), hex0x(b)}

    with running_server(tmp_path / "fresh", ROOT) as fresh:
        response = import_document(fresh, exported, chunk_size=97)
        assert (response.validators, response.imported) == (2, 2)
        assert export_document(fresh) == exported
        assert export_document(fresh, [b]) == export_document(server, [b])
        assert_decision(sign_block(fresh, a, 10, B), R.REASON_DOUBLE_PROPOSAL)


def test_export_of_selected_keys(server: Running) -> None:
    a, b, c = pubkey(1), pubkey(2), pubkey(3)
    register(server, a, b, c)
    sign_block(server, b, 3, A)
    selected = json.loads(export_document(server, [c, b, c]))
    assert [entry["pubkey"] for entry in selected["data"]] == sorted([hex0x(b), hex0x(c)])


def test_minimal_strategy_minifies(tmp_path: Path) -> None:
    reduced, single_unknown, with_history = pubkey(1), pubkey(2), pubkey(3)
    with running_server(tmp_path / "db", ROOT, strategy=Strategy.MINIMAL) as server:
        register(server, with_history)
        sign_block(server, with_history, 3, A)
        document = interchange_document(
            [
                Entry(reduced, blocks=((5, A), (9, B)), attestations=((1, 2, A), (3, 4, B))),
                Entry(single_unknown, blocks=((5, None),)),  # nothing to drop
                Entry(with_history, blocks=((8, B),)),
            ]
        )

        response = import_document(server, document)

        assert response.validators == 3
        assert response.imported == 1
        assert statuses(response) == {
            reduced: interchange_pb2.IMPORT_STATUS_MINIFIED,
            with_history: interchange_pb2.IMPORT_STATUS_MINIFIED,
        }
        state = summary(server, reduced)
        assert (state.block_count, state.attestation_count) == (1, 1)
        assert (state.lowest_slot, state.highest_target_epoch) == (9, 4)
        # Minified records keep no root: even the imported message is not a repeat; below it is refused.
        assert_decision(sign_block(server, reduced, 9, B), R.REASON_DOUBLE_PROPOSAL)
        assert_decision(sign_block(server, reduced, 5, A), R.REASON_SLOT_AT_OR_BELOW_LOWER_BOUND)
        assert_decision(sign_attestation(server, reduced, 3, 4, B), R.REASON_DOUBLE_VOTE)
        assert_decision(sign_block(server, reduced, 10, A), R.REASON_ALLOWED_NEW)
        assert summary(server, with_history).block_count == 1
        assert_decision(sign_block(server, with_history, 4, A), R.REASON_SLOT_AT_OR_BELOW_LOWER_BOUND)


def test_minimal_reimport_is_idempotent(tmp_path: Path) -> None:
    a, b = pubkey(1), pubkey(2)
    document = interchange_document(
        [Entry(a, blocks=((5, A), (9, B)), attestations=((1, 2, A), (3, 4, B))), Entry(b, blocks=((5, None),))]
    )
    with running_server(tmp_path / "db", ROOT, strategy=Strategy.MINIMAL) as server:
        import_document(server, document)
        exported = export_document(server)
        again = import_document(server, document)
        assert again.validators == 2
        assert statuses(again) == {
            a: interchange_pb2.IMPORT_STATUS_UNCHANGED,
            b: interchange_pb2.IMPORT_STATUS_UNCHANGED,
        }
        assert export_document(server) == exported
        assert statuses(import_document(server, exported)) == statuses(again)
        assert export_document(server) == exported


def test_minimal_import_reports_unchanged_only_when_nothing_changed(tmp_path: Path) -> None:
    """The key signed a block after its first import; importing the same document again minifies the history
    (the signed block loses its root, the older one goes), so the key's outcome must not read "nothing
    changed"."""
    key = pubkey(1)
    document = interchange_document([Entry(key, blocks=((5, A), (9, B)))])
    with running_server(tmp_path / "db", ROOT, strategy=Strategy.MINIMAL) as server:
        import_document(server, document)
        assert_decision(sign_block(server, key, 10, A), R.REASON_ALLOWED_NEW)
        before = export_document(server)
        again = import_document(server, document)
        after = export_document(server)
        if statuses(again).get(key) == interchange_pb2.IMPORT_STATUS_UNCHANGED:
            assert after == before, "reported UNCHANGED, yet the export changed"


def test_results_are_capped_for_a_large_document(tmp_path: Path) -> None:
    """20,000 keys with two blocks each, minimal strategy: every key is MINIFIED, yet the response stays far
    under the 4 MiB a default client accepts, and `results_omitted` accounts for what is not listed."""
    count = 20_000
    keys = [pubkey(100_000 + i) for i in range(count)]
    document = interchange_document(Entry(key, blocks=((1, A), (2, B))) for key in keys)
    with running_server(tmp_path / "db", ROOT, strategy=Strategy.MINIMAL) as server:
        chunks = (document[i : i + 256 * 1024] for i in range(0, len(document), 256 * 1024))
        response = import_chunks(server, chunks)

        assert response.validators == count
        assert response.imported == 0
        assert response.results, "the first results are listed"
        assert len(response.results) + response.results_omitted == count
        assert response.results_omitted > 0
        assert set(statuses(response).values()) == {interchange_pb2.IMPORT_STATUS_MINIFIED}
        assert set(statuses(response)) <= set(keys)
        assert response.ByteSize() < DEFAULT_MAX_MESSAGE // 8
        assert summary(server, keys[-1]).block_count == 1


def test_a_complete_history_streamed_in_small_chunks_imports_as_its_window(tmp_path: Path) -> None:
    """Through the gRPC stream, a key's 300 epochs in two entries (newer half first) end as the default window
    of 64 epochs plus the floors standing for the rest, and the floors outlive a restart."""
    key = pubkey(7)
    older = tuple((t - 1, t, A) for t in range(1, 151))
    newer = tuple((t - 1, t, A) for t in range(151, 301))
    document = interchange_document(
        [Entry(key, attestations=newer), Entry(key, blocks=((9_000, B),), attestations=older)]
    )
    with running_server(tmp_path / "db", ROOT) as server:
        response = import_document(server, document, chunk_size=4096)
        assert (response.validators, response.imported) == (1, 1)
    with running_server(tmp_path / "db", ROOT) as server:
        state = summary(server, key)
        assert (state.attestation_count, state.lowest_target_epoch, state.highest_target_epoch) == (65, 236, 300)
        assert (state.source_epoch_floor, state.target_epoch_floor) == (234, 235)
        assert_decision(sign_attestation(server, key, 100, 200, C), R.REASON_SOURCE_EPOCH_BELOW_LOWER_BOUND)
        assert_decision(sign_attestation(server, key, 299, 300, A), R.REASON_ALLOWED_REPEAT)
        assert_decision(sign_attestation(server, key, 300, 301, C), R.REASON_ALLOWED_NEW)


def test_live_imports_of_two_files_leave_no_signable_gap(server: Running) -> None:
    """Issue 9 over gRPC while serving: last year's export, then the export of the client since (which pruned).
    Inside the gap nothing is signable; the repeat of a known root and everything above still are."""
    key = pubkey(1)
    import_document(server, interchange_document([Entry(key, blocks=((5701, A),), attestations=((100, 102, A),))]))
    response = import_document(
        server, interchange_document([Entry(key, blocks=((6739, None),), attestations=((126, 127, None),))])
    )

    [result] = response.results
    assert result.status == interchange_pb2.IMPORT_STATUS_MERGED
    assert "raised the lower bounds: slot 6739 (was 5701)" in result.message
    assert_decision(sign_block(server, key, 5838, B), R.REASON_SLOT_AT_OR_BELOW_LOWER_BOUND)
    assert_decision(sign_attestation(server, key, 119, 124, B), R.REASON_SOURCE_EPOCH_BELOW_LOWER_BOUND)
    assert_decision(sign_block(server, key, 5701, A), R.REASON_ALLOWED_REPEAT)
    assert_decision(sign_attestation(server, key, 100, 102, A), R.REASON_ALLOWED_REPEAT)
    assert_decision(sign_block(server, key, 6740, B), R.REASON_ALLOWED_NEW)
    assert_decision(sign_attestation(server, key, 127, 128, B), R.REASON_ALLOWED_NEW)
    floors = summary(server, key)
    assert (floors.slot_floor, floors.source_epoch_floor, floors.target_epoch_floor) == (6739, 126, 127)
