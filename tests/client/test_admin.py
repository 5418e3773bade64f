"""The admin, interchange and health wrappers, typed, against a real server."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest

from sidecar.client import (
    AsyncSidecarClient,
    HighWatermark,
    ImportStatus,
    Reason,
    ServingStatus,
    SidecarClient,
    SidecarNotFoundError,
    SidecarRefusedRequestError,
    SidecarUnavailableError,
)
from tests.service.helpers import ROOT, Entry, interchange_document
from tests.support.keys import pubkey, signing_root
from tests.support.server import Running, running_server


def test_register_summary_decisions_checkpoint(client: SidecarClient) -> None:
    key = pubkey(1)
    registration = client.register([key, pubkey(2)])
    assert (registration.registered, registration.already_registered) == (2, 0) and registration.sequence > 0
    assert client.register([key]).already_registered == 1
    allowed = client.check_block(key, 5, signing_root(1))
    client.check_attestation(key, 1, 2, signing_root(2))

    summary = client.summary(key)
    assert summary.registered and (summary.block_count, summary.attestation_count) == (1, 1)
    assert (summary.lowest_slot, summary.highest_slot, summary.slot_floor) == (5, 5, None)
    assert summary.last_decision is not None and summary.last_decision.kind == "attestation"
    assert not client.summary(pubkey(9)).registered

    records = list(client.decisions(key))
    assert [(r.kind, r.slot, r.source_epoch, r.target_epoch, r.reason) for r in records] == [
        ("block", 5, None, None, Reason.ALLOWED_NEW),
        ("attestation", None, 1, 2, Reason.ALLOWED_NEW),
    ]
    assert records[0].sequence == allowed.sequence and records[0].allowed
    assert list(client.decisions(key, since_sequence=records[0].sequence)) == records[1:]

    checkpoint = client.checkpoint()
    assert checkpoint.sequence >= records[-1].sequence and checkpoint.validators == 2 and checkpoint.file_name


def test_import_from_bytes_path_and_file_then_export(client: SidecarClient, tmp_path: Path) -> None:
    document = interchange_document([Entry(pubkey(3), blocks=((10, signing_root(1)),))])
    report = client.import_interchange(document, chunk_size=17)
    assert (report.validators, report.imported, report.results) == (1, 1, ())
    path = tmp_path / "history.json"
    path.write_bytes(document)
    again = client.import_interchange(path)
    assert [(r.pubkey, r.status) for r in again.results] == [(pubkey(3), ImportStatus.UNCHANGED)]
    with path.open("rb") as handle:
        assert client.import_interchange(handle).results[0].status is ImportStatus.UNCHANGED

    out = tmp_path / "export.json"
    written = client.export_interchange(out, [pubkey(3)])
    assert written == out.stat().st_size and not list(tmp_path.glob(".*.partial"))
    exported = json.loads(out.read_bytes())
    assert [item["pubkey"] for item in exported["data"]] == ["0x" + pubkey(3).hex()]
    buffer = io.BytesIO()
    client.export_interchange(buffer)
    assert json.loads(buffer.getvalue()) == exported


def test_refused_import_and_unknown_export(client: SidecarClient, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(SidecarRefusedRequestError):
        client.import_interchange(b"{not json")
    with pytest.raises(SidecarNotFoundError):
        client.export_interchange(tmp_path / "out" / "export.json", [pubkey(4)])
    assert not list((tmp_path / "out").iterdir()), "a failed export leaves no file"
    with pytest.raises(FileNotFoundError):
        client.import_interchange(tmp_path / "missing.json")


def test_health_follows_recovery(tmp_path: Path) -> None:
    with (
        running_server(tmp_path / "db", ROOT, recover=False) as server,
        SidecarClient(server.address) as client,
    ):
        assert client.health() is ServingStatus.NOT_SERVING
        server.call(server.server.recover())
        assert client.health() is ServingStatus.SERVING
        assert client.health("slashing_protection.v1.SlashingProtectionService") is ServingStatus.SERVING
        with pytest.raises(SidecarNotFoundError):
            client.health("no.such.Service")


def test_health_of_nothing_listening_is_unavailable() -> None:
    with SidecarClient("127.0.0.1:1") as client, pytest.raises(SidecarUnavailableError):
        client.health(timeout=2)


def test_async_admin_and_interchange(server: Running, tmp_path: Path) -> None:
    document = interchange_document([Entry(pubkey(5), attestations=((1, 2, signing_root(1)),))])

    async def scenario() -> None:
        async with AsyncSidecarClient(server.address, genesis_validators_root=ROOT) as client:
            assert await client.health() is ServingStatus.SERVING
            assert (await client.import_interchange(document, chunk_size=11)).imported == 1
            assert (await client.register([pubkey(5)])).already_registered == 1
            assert (
                await client.check_attestation(pubkey(5), 1, 2, signing_root(1))
            ).reason is Reason.ALLOWED_REPEAT
            records = [record async for record in client.decisions(pubkey(5))]
            assert [record.reason for record in records] == [Reason.ALLOWED_REPEAT]
            assert (await client.summary(pubkey(5))).attestation_count == 1
            assert (await client.checkpoint()).validators == 1
            written = await client.export_interchange(tmp_path / "out.json")
            assert written == (tmp_path / "out.json").stat().st_size

    asyncio.run(scenario())


def test_the_high_watermark_sync_and_async(client: SidecarClient, server: Running) -> None:
    key = pubkey(6)
    client.register([key])
    assert client.high_watermark() is None
    assert client.set_high_watermark(3200, 100) == HighWatermark(3200, 100)
    assert client.high_watermark() == HighWatermark(3200, 100)
    refused = client.check_block(key, 3200, signing_root(1))
    assert (refused.allowed, refused.reason) == (False, Reason.AT_OR_BEYOND_HIGH_WATERMARK)
    with pytest.raises(SidecarRefusedRequestError, match="slot 31 is below its epoch 32"):
        client.set_high_watermark(31, 32)
    with pytest.raises(SidecarRefusedRequestError, match=r"must be an integer in \[0, 2\*\*64\).*not sent"):
        client.set_high_watermark(-1, 0)
    assert client.high_watermark() == HighWatermark(3200, 100)

    async def scenario() -> None:
        async with AsyncSidecarClient(server.address, genesis_validators_root=ROOT) as sidecar:
            assert await sidecar.high_watermark() == HighWatermark(3200, 100)
            assert await sidecar.set_high_watermark(64, 2) == HighWatermark(64, 2)
            assert (await sidecar.check_attestation(key, 1, 2, signing_root(2))).reason is (
                Reason.AT_OR_BEYOND_HIGH_WATERMARK
            )
            await sidecar.remove_high_watermark()
            assert await sidecar.high_watermark() is None
            assert (await sidecar.check_attestation(key, 1, 2, signing_root(2))).allowed

    asyncio.run(scenario())
    assert client.high_watermark() is None
    client.remove_high_watermark()
