"""Errors raised while reading an EIP-3076 interchange document.

::

    InterchangeError                 base: the document is refused whole
    ├── InterchangeFormatError       not JSON (syntax, encoding, trailing bytes, size limits) or JSON that
    │                                fails the schema (shape, key set, hex length, u64 range, duplicate key)
    └── InterchangeVersionError      metadata.interchange_format_version is a string other than "5"

Every error names where in the document it was found, as a JSON path rendered like
``data[12].signed_attestations[3].target_epoch`` (``$`` is the document itself), and why. ``str(error)`` is
``"<path>: <reason>"``; the two parts are also available as ``error.path`` and ``error.reason``.

Writing a document from in-memory records never raises these: records that cannot be written (a pubkey of the
wrong length, a slot above 2**64 - 1) are a programming error and raise ``ValueError``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Keys come from the untrusted document and may be up to the parser's token limit long; a message stays short.
_MAX_KEY_CHARS_SHOWN = 64


def quote_key(key: str) -> str:
    """Render a document key for a message: JSON-quoted, so control characters and quotes stay visible."""
    if len(key) > _MAX_KEY_CHARS_SHOWN:
        return json.dumps(key[:_MAX_KEY_CHARS_SHOWN])[:-1] + '..."'
    return json.dumps(key)


def format_path(segments: Sequence[str | int]) -> str:
    """Render path segments (object keys and array indexes) as ``data[3].pubkey``; ``$`` for the root."""
    parts: list[str] = []
    for segment in segments:
        if isinstance(segment, int):
            parts.append(f"[{segment}]")
        elif _IDENTIFIER.fullmatch(segment):
            parts.append(f".{segment}" if parts else segment)
        else:
            parts.append(f"[{quote_key(segment)}]")
    return "".join(parts) if parts else "$"


class InterchangeError(Exception):
    """The document cannot be used; nothing in it should be trusted or imported."""

    def __init__(self, path: Sequence[str | int] | str, reason: str) -> None:
        self.path = path if isinstance(path, str) else format_path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class InterchangeFormatError(InterchangeError):
    """The bytes are not one JSON document, or the document does not match the interchange schema."""


class InterchangeVersionError(InterchangeError):
    """The document declares an interchange format version this code does not read (only "5" is read)."""

    def __init__(self, version: str) -> None:
        self.version = version
        super().__init__(
            ("metadata", "interchange_format_version"),
            f'unsupported interchange format version {quote_key(version)} (only "5" is supported)',
        )
