"""Writing EIP-3076 interchange documents (format version "5").

Output is deterministic: the same root and records give the same bytes. Hex is lowercase, a ``signing_root`` of
``None`` is left out, and validators and their records are written in the order given (no sorting, no merging:
the same pubkey given twice is written twice). The layout is fixed, two-space indented, metadata first (so a
streaming reader learns the genesis validators root before any record), one block or attestation per line
(hex shortened here)::

    {
      "metadata": {
        "interchange_format_version": "5",
        "genesis_validators_root": "0x04700007fabc...428824b3a673"
      },
      "data": [
        {
          "pubkey": "0xb845089a1457...122d58723bed",
          "signed_blocks": [
            {"slot": "81952", "signing_root": "0x4ff6f743a43f...284a69eb850b"},
            {"slot": "81951"}
          ],
          "signed_attestations": []
        }
      ]
    }

The file ends with a newline. ``write_interchange`` writes each validator as it takes it from the iterable, in
pieces of bounded size, so exporting a database never holds the whole document; if the iterable raises, ``out``
holds a truncated document. Records that cannot be written (a pubkey that is not 48 bytes, a root that is not 32,
a slot or epoch outside 0..2**64 - 1) raise ``ValueError`` before anything of that validator is written.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import BinaryIO, Final

from interchange.models import PUBKEY_BYTES, ROOT_BYTES, U64_MAX, ValidatorRecords

# Lines are gathered and written together; a validator with a million attestations is written in many pieces.
_PIECES_PER_WRITE: Final = 8192


def _hex(value: object, size: int) -> str | None:
    """``0x`` and lowercase hex if ``value`` is ``size`` bytes, else None (the caller says where)."""
    if isinstance(value, bytes) and len(value) == size:
        return "0x" + value.hex()
    return None


def _u64(value: object) -> str | None:
    # type() rather than isinstance(): a bool is an int, and True must not be written as slot "1".
    if type(value) is int and 0 <= value <= U64_MAX:
        return str(value)
    return None


def _wrong_bytes(where: str, size: int, value: object) -> ValueError:
    shown = f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__
    return ValueError(f"{where}: expected {size} bytes, got {shown}")


def _wrong_u64(where: str, value: object) -> ValueError:
    return ValueError(f"{where}: expected an int in 0..2**64 - 1, got {value!r}")


def _record(position: int, field: str, index: int) -> str:
    return f"validators[{position}].{field}[{index}]"


def _root_member(root: bytes | None, position: int, field: str, index: int) -> str:
    if root is None:
        return ""
    text = _hex(root, ROOT_BYTES)
    if text is None:
        raise _wrong_bytes(f"{_record(position, field, index)}.signing_root", ROOT_BYTES, root)
    return f', "signing_root": "{text}"'


def _validator_lines(position: int, validator: ValidatorRecords) -> list[str]:
    """The validator's lines, all checked before any is returned. Paths in errors are built only on failure."""
    pubkey = _hex(validator.pubkey, PUBKEY_BYTES)
    if pubkey is None:
        raise _wrong_bytes(f"validators[{position}].pubkey", PUBKEY_BYTES, validator.pubkey)
    lines = ["    {", f'      "pubkey": "{pubkey}",']
    blocks = validator.signed_blocks
    if blocks:
        lines.append('      "signed_blocks": [')
        last = len(blocks) - 1
        for index, block in enumerate(blocks):
            slot = _u64(block.slot)
            if slot is None:
                raise _wrong_u64(f"{_record(position, 'signed_blocks', index)}.slot", block.slot)
            root = _root_member(block.signing_root, position, "signed_blocks", index)
            comma = "," if index < last else ""
            lines.append(f'        {{"slot": "{slot}"{root}}}{comma}')
        lines.append("      ],")
    else:
        lines.append('      "signed_blocks": [],')
    attestations = validator.signed_attestations
    if attestations:
        lines.append('      "signed_attestations": [')
        last = len(attestations) - 1
        for index, attestation in enumerate(attestations):
            source = _u64(attestation.source_epoch)
            if source is None:
                where = _record(position, "signed_attestations", index)
                raise _wrong_u64(f"{where}.source_epoch", attestation.source_epoch)
            target = _u64(attestation.target_epoch)
            if target is None:
                where = _record(position, "signed_attestations", index)
                raise _wrong_u64(f"{where}.target_epoch", attestation.target_epoch)
            root = _root_member(attestation.signing_root, position, "signed_attestations", index)
            comma = "," if index < last else ""
            lines.append(f'        {{"source_epoch": "{source}", "target_epoch": "{target}"{root}}}{comma}')
        lines.append("      ]")
    else:
        lines.append('      "signed_attestations": []')
    lines.append("    }")
    return lines


def write_interchange(
    out: BinaryIO, genesis_validators_root: bytes, validators: Iterable[ValidatorRecords]
) -> None:
    """Write one interchange document to ``out``, streaming: validators are written as they are iterated."""
    root = _hex(genesis_validators_root, ROOT_BYTES)
    if root is None:
        raise _wrong_bytes("genesis_validators_root", ROOT_BYTES, genesis_validators_root)
    out.write(
        (
            "{\n"
            '  "metadata": {\n'
            '    "interchange_format_version": "5",\n'
            f'    "genesis_validators_root": "{root}"\n'
            "  },\n"
            '  "data": ['
        ).encode("ascii")
    )
    pending: list[str] = []
    separator = "\n"
    for position, validator in enumerate(validators):
        lines = _validator_lines(position, validator)
        # The "," after a validator is only known once the next one exists, so it leads the next one's text.
        pending.append(separator)
        separator = ",\n"
        for index, line in enumerate(lines):
            if index:
                pending.append("\n")
            pending.append(line)
            if len(pending) >= _PIECES_PER_WRITE:
                out.write("".join(pending).encode("ascii"))
                pending.clear()
    pending.append("]\n}\n" if separator == "\n" else "\n  ]\n}\n")
    out.write("".join(pending).encode("ascii"))


def dumps_interchange(genesis_validators_root: bytes, validators: Iterable[ValidatorRecords]) -> bytes:
    """The document ``write_interchange`` would write, as bytes."""
    buffer = io.BytesIO()
    write_interchange(buffer, genesis_validators_root, validators)
    return buffer.getvalue()
