"""Genesis validators roots of the networks `--network` knows (from the contract)."""

from __future__ import annotations

from sidecar.domain import ROOT_SIZE
from sidecar.errors import ConfigurationError

__all__ = ["NETWORKS", "genesis_validators_root_for", "parse_root_hex"]

NETWORKS: dict[str, str] = {
    "mainnet": "0x4b363db94e286120d76eb905340fdd4e54bfe9f06bf33ff6cf5ad27f511bfe95",
    "sepolia": "0xd8ea171f3c94aea21ebc42a1ed61052acf3f9209c00e4efbaaddac09ed9b8078",
    "holesky": "0x9143aa7c615a7f7115e2b6aac319c03529df8242ae705fba9df39b79c59fa8b1",
    "hoodi": "0x212f13fc4df078b6cb7db228f1c8307566dcecf900867401a92023d7ba99cb5f",
}


def parse_root_hex(text: str, what: str = "genesis validators root") -> bytes:
    """Parses a 0x-prefixed (or bare) 32-byte hex string."""
    return parse_hex(text, ROOT_SIZE, what)


def parse_hex(text: str, size: int, what: str) -> bytes:
    body = text[2:] if text[:2] in ("0x", "0X") else text
    try:
        value = bytes.fromhex(body)
    except ValueError:
        raise ConfigurationError(f"{what} {text!r} is not hex") from None
    if len(value) != size or len(body) != size * 2:
        raise ConfigurationError(f"{what} {text!r} must be {size} bytes ({size * 2} hex digits)")
    return value


def genesis_validators_root_for(network: str) -> bytes:
    try:
        return bytes.fromhex(NETWORKS[network][2:])
    except KeyError:
        known = ", ".join(sorted(NETWORKS))
        raise ConfigurationError(f"unknown network {network!r}; known networks: {known}") from None
