"""The interchange schema (``schema.json``): loading it, applying it with ``jsonschema``, and its leaf checks.

``schema.json`` is the authority: a strict JSON Schema (draft 2020-12) of format version "5", plus one rule it
cannot state exactly, that every decimal u64 string is at most 2**64 - 1. It is enforced in two ways:

- ``metadata_from_json`` validates the decoded metadata object with ``jsonschema`` itself (once per document).
- The elements of ``data`` go through a compiled fast path, ``interchange.parse``'s event-by-event reader,
  built from the leaf checks below (``hex_bytes``, ``u64``). ``jsonschema`` costs tens of microseconds per
  element, which would put a 100,000-validator document far over its parse budget. The fast path must accept
  exactly what ``jsonschema`` with ``$defs/validator`` plus the u64 range accepts, and when it refuses it must
  report one of the (path, reason) pairs that ``schema_violations`` finds in the same element.
  ``tests/interchange`` holds it to that with generated valid and mutated elements: change both together.

Reasons are shared sentences, so an error reads the same whichever path found it: ``not an object``,
``not an array``, ``missing key "slot"``, ``unknown key "foo"``, ``not a decimal u64 string``,
``not a 0x-prefixed 32-byte hex string``, ...
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib import resources
from typing import Any, Final

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from interchange.errors import InterchangeFormatError, InterchangeVersionError, format_path, quote_key
from interchange.models import INTERCHANGE_FORMAT_VERSION, ROOT_BYTES, U64_MAX, Metadata

Path = tuple[str | int, ...]

SCHEMA: Final[dict[str, Any]] = json.loads(
    resources.files("interchange").joinpath("schema.json").read_text(encoding="utf-8")
)

NOT_AN_OBJECT: Final = "not an object"
NOT_AN_ARRAY: Final = "not an array"
NOT_U64: Final = "not a decimal u64 string"
U64_OUT_OF_RANGE: Final = "not a decimal u64 string (greater than 2**64 - 1)"
NOT_PUBKEY: Final = f"not a {SCHEMA['$defs']['pubkey']['title']}"
NOT_ROOT: Final = f"not a {SCHEMA['$defs']['root']['title']}"
NOT_VERSION_5: Final = 'not the string "5"'

_U64_MAX_DIGITS: Final = len(str(U64_MAX))


def duplicate_key(key: str) -> str:
    return f"duplicate key {quote_key(key)}"


def missing_key(key: str) -> str:
    return f"missing key {quote_key(key)}"


def unknown_key(key: str) -> str:
    return f"unknown key {quote_key(key)}"


def definition_validator(name: str) -> Draft202012Validator:
    """A ``jsonschema`` validator for ``$defs/<name>`` of the interchange schema ("" for the whole document)."""
    schema: dict[str, Any] = dict(SCHEMA) if not name else {"$defs": SCHEMA["$defs"], "$ref": f"#/$defs/{name}"}
    return Draft202012Validator(schema)


_METADATA_VALIDATOR: Final = definition_validator("metadata")


def schema_violations(validator: Draft202012Validator, value: object, base: Path = ()) -> list[tuple[str, str]]:
    """Every (path, reason) ``jsonschema`` finds in ``value``, paths rendered from ``base``, in the shared words.

    The u64 upper bound is not part of this: the schema cannot state it.
    """
    found: list[tuple[str, str]] = []
    for error in _leaf_errors(validator.iter_errors(value)):
        path = (*base, *error.absolute_path)
        found.extend((format_path(where), reason) for where, reason in _explain(error, path))
    return found


def _leaf_errors(errors: Iterator[ValidationError]) -> Iterator[ValidationError]:
    for error in errors:
        if error.context:
            yield from _leaf_errors(iter(error.context))
        else:
            yield error


def _explain(error: ValidationError, path: Path) -> Iterator[tuple[Path, str]]:
    keyword = error.validator
    instance = error.instance
    schema = error.schema if isinstance(error.schema, dict) else {}
    if keyword == "required" and isinstance(instance, dict):
        required: list[str] = list(error.validator_value)  # type: ignore[arg-type]
        for key in required:
            if key not in instance:
                yield path, missing_key(key)
    elif keyword == "additionalProperties" and isinstance(instance, dict):
        allowed = schema.get("properties", {})
        for key in instance:
            if key not in allowed:
                yield path, unknown_key(key)
    elif keyword == "type" and error.validator_value == "object":
        yield path, NOT_AN_OBJECT
    elif keyword == "type" and error.validator_value == "array":
        yield path, NOT_AN_ARRAY
    elif keyword == "const":
        yield path, NOT_VERSION_5
    elif "title" in schema:
        # Every leaf string format has a title ("decimal u64 string", ...) that names what was expected.
        yield path, f"not a {schema['title']}"
    else:
        yield path, error.message[:200]


def metadata_from_json(value: object) -> Metadata:
    """Validate a decoded ``metadata`` object with ``jsonschema`` and convert it.

    A version string other than "5" raises ``InterchangeVersionError`` before any other check, so a document of
    another version is reported as such even where its metadata differs in other ways too.
    """
    if isinstance(value, dict):
        version = value.get("interchange_format_version")
        if isinstance(version, str) and version != INTERCHANGE_FORMAT_VERSION:
            raise InterchangeVersionError(version)
    violations = schema_violations(_METADATA_VALIDATOR, value, ("metadata",))
    if violations:
        raise InterchangeFormatError(*min(violations))
    assert isinstance(value, dict)  # the schema has just said so
    root = hex_bytes(value["genesis_validators_root"], ROOT_BYTES)
    if root is None:
        # Unreachable while the schema and hex_bytes agree; if they ever drift, refuse rather than guess.
        raise InterchangeFormatError(("metadata", "genesis_validators_root"), NOT_ROOT)
    return Metadata(INTERCHANGE_FORMAT_VERSION, root)


def hex_bytes(value: object, size: int) -> bytes | None:
    """``value`` as bytes if it is "0x" and exactly ``2 * size`` hex digits of either case, else None."""
    if type(value) is not str or len(value) != 2 + 2 * size or not value.startswith("0x"):
        return None
    try:
        decoded = bytes.fromhex(value[2:])
    except ValueError:
        return None
    # fromhex skips ASCII whitespace between bytes: a string of the right length that contains any decodes to
    # fewer bytes, so this length check is what makes the function an exact match of the schema's pattern.
    return decoded if len(decoded) == size else None


def u64(value: object) -> int | None:
    """``value`` as an int if it is a decimal u64 string, else None (``u64_reason`` says why)."""
    # isascii() first: str.isdigit() alone accepts other scripts' digits ("\u0661") and superscripts ("\u00b2").
    if (
        type(value) is str
        and 0 < len(value) <= _U64_MAX_DIGITS
        and value.isascii()
        and value.isdigit()
        and (value[0] != "0" or len(value) == 1)
    ):
        number = int(value)
        if number <= U64_MAX:
            return number
    return None


def u64_reason(value: object) -> str:
    """Why ``u64(value)`` is None."""
    if type(value) is str and len(value) == _U64_MAX_DIGITS and value.isascii() and value.isdigit():
        return U64_OUT_OF_RANGE if value[0] != "0" else NOT_U64
    return NOT_U64
