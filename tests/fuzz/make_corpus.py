"""Write the fuzz targets' seed corpus, ``tests/fuzz/corpus/<target>/``, from the real code's own output.

    .venv/bin/python -m tests.fuzz.make_corpus

A store in a temporary directory registers keys, decides blocks and attestations and imports a document; its
log segment and checkpoint body become the ``segment`` and ``checkpoint`` seeds (with each mode byte, a torn and
two write-back-holed variants, and the same records as a format-1 segment), hand-written documents the
``interchange`` seeds, and one valid request per RPC the ``request`` seeds. Deterministic: the clock is fixed, so
rerunning rewrites the same bytes.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from pathlib import Path

from sidecar.domain import SigningRoot, valid_pubkey, valid_signing_root
from sidecar.storage import FileOps, list_checkpoints, read_checkpoint
from sidecar.storage.framing import RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE
from sidecar.store import Store, StoreOptions
from slashing_protection.v1 import admin_pb2
from tests.support.requests import attestation_request, batch_request, block_request, register_request

from .targets import _RPCS, FIXED_NOW_NS, GENESIS, REGISTERED, _frame_boundaries, wrap_checkpoint

CORPUS = Path(__file__).parent / "corpus"
KEY, OTHER = REGISTERED
IMPORTED = valid_pubkey(bytes([0xC3]) * 48)


def _root(n: int) -> SigningRoot:
    return valid_signing_root(bytes([n]) * 32)


def interchange_documents() -> dict[str, bytes]:
    metadata = {"interchange_format_version": "5", "genesis_validators_root": "0x" + GENESIS.hex()}
    complete = {
        "metadata": metadata,
        "data": [
            {
                "pubkey": "0x" + IMPORTED.hex(),
                "signed_blocks": [
                    {"slot": "81952", "signing_root": "0x" + _root(4).hex()},
                    {"slot": "81953"},
                ],
                "signed_attestations": [
                    {"source_epoch": "2290", "target_epoch": "3007", "signing_root": "0x" + _root(5).hex()},
                    {"source_epoch": "2290", "target_epoch": "3008"},
                ],
            }
        ],
    }
    minimal = {
        "data": [{"pubkey": "0x" + KEY.hex(), "signed_blocks": [{"slot": "7"}], "signed_attestations": []}],
        "metadata": metadata,
    }
    return {
        "complete.json": json.dumps(complete, indent=1).encode(),
        "metadata-last.json": json.dumps(minimal).encode(),
        "empty-data.json": json.dumps({"metadata": metadata, "data": []}).encode(),
        "duplicate-key.json": b'{"metadata": {"interchange_format_version": "5", '
        b'"interchange_format_version": "5"}}',
    }


def store_files() -> tuple[bytes, bytes]:
    """A real log segment (header stripped) and a real checkpoint body, from a small store workload."""
    directory = Path(tempfile.mkdtemp())
    try:
        options = StoreOptions(clock_ns=lambda: FIXED_NOW_NS)
        store = Store.open_or_create(directory / "data", GENESIS, options)
        try:
            store.register_validators(list(REGISTERED))
            store.check_and_record_block(KEY, 10, _root(1))
            store.check_and_record_block(KEY, 10, _root(2))  # refused: a double proposal
            store.check_and_record_attestations([(KEY, 1, 2, _root(3)), (OTHER, 1, 2, _root(3))])
            store.check_and_record_attestations([(OTHER, 3, 1, _root(3))])  # refused: source after target
            store.import_interchange(io.BytesIO(interchange_documents()["complete.json"]))
            store.log.sync()
        finally:
            store.close(final_checkpoint=True)
        fileops = FileOps()
        (segment,) = sorted((directory / "data" / "log").glob("*.log"))
        newest = list_checkpoints(directory / "data" / "checkpoints", fileops)[0]
        body = read_checkpoint(newest.path, fileops).body
        return segment.read_bytes()[SEGMENT_HEADER_SIZE:], body
    finally:
        shutil.rmtree(directory)


def requests() -> dict[str, bytes]:
    messages = {
        "CheckAndRecordBlock": block_request(KEY, 11, _root(7), GENESIS),
        "CheckAndRecordAttestation": attestation_request(KEY, 4, 5, _root(6), GENESIS),
        "CheckAndRecordAttestations": batch_request([(KEY, 4, 5, _root(6)), (OTHER, 4, 5, _root(6))], GENESIS),
        "RegisterValidators": register_request(IMPORTED, KEY),
        "GetValidatorSummary": admin_pb2.GetValidatorSummaryRequest(pubkey=KEY),
        "ListDecisions": admin_pb2.ListDecisionsRequest(pubkey=KEY, since_sequence=1),
    }
    return {
        f"{method}.pb": bytes([index]) + messages[method].SerializeToString()
        for index, (_, method, _) in enumerate(_RPCS)
    }


def format_1(log_body: bytes) -> bytes:
    """The same frames without the first-of-write flag (their CRCs are stale: the seed's mode recomputes them)."""
    body = bytearray(log_body)
    offset = 0
    while offset + RECORD_HEADER_SIZE <= len(body):
        body[offset + 8] &= 0x7F
        offset += RECORD_HEADER_SIZE + int.from_bytes(body[offset : offset + 4], "little")
    return bytes(body)


def corpus() -> dict[str, dict[str, bytes]]:
    log_body, checkpoint_body = store_files()
    holed = bytearray(log_body)
    holed[512 - SEGMENT_HEADER_SIZE : 1024 - SEGMENT_HEADER_SIZE] = bytes(512)  # a sector never written back
    # Without the import's commit (a write of its own, the last), the write before it, holding every other record,
    # is the final one; its first sector never written back and the rest intact: a torn tail from the first record.
    commit = _frame_boundaries(log_body)[-1][0]
    final_write = bytearray(log_body[:commit])
    final_write[: 512 - SEGMENT_HEADER_SIZE] = bytes(512 - SEGMENT_HEADER_SIZE)
    return {
        "segment": {
            "real-log.bin": b"\x00" + log_body,
            "real-log-recovered.bin": b"\x04" + log_body,
            "real-log-fix-crcs.bin": b"\x05" + log_body,
            "real-log-two-segments.bin": b"\x07" + log_body,
            "torn.bin": b"\x04" + log_body[: len(log_body) - 40],
            "write-back-hole.bin": b"\x04" + bytes(holed),
            "write-back-hole-in-final-write.bin": b"\x04" + bytes(final_write),
            "real-log-format-1.bin": b"\x0d" + format_1(log_body),
        },
        "checkpoint": {
            "real.bin": b"\x00" + wrap_checkpoint(checkpoint_body, sequence=9),
            "real-body.bin": b"\x01" + checkpoint_body,
        },
        "interchange": interchange_documents(),
        "request": requests(),
    }


def main() -> None:
    for target, seeds in corpus().items():
        directory = CORPUS / target
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        for name, content in seeds.items():
            (directory / name).write_bytes(content)
        print(f"{directory}: {len(seeds)} seeds")


if __name__ == "__main__":
    main()
