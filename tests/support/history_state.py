"""Comparing histories field by field, derived indexes included."""

from __future__ import annotations

from array import array

from sidecar.history import ValidatorHistory


def full_state(history: ValidatorHistory) -> dict[str, object]:
    """Every slot of the history as plain, comparable values."""
    state: dict[str, object] = {}
    for name in ValidatorHistory.__slots__:
        value = getattr(history, name)
        if isinstance(value, array):
            value = (value.typecode, value.tolist())
        elif isinstance(value, bytearray):
            value = ("bytearray", bytes(value))
        elif isinstance(value, dict):
            value = sorted(value.items())
        state[name] = value
    return state
