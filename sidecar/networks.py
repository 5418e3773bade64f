"""Genesis validators roots of the networks `--network` knows (from the contract), and the command line's hex
values.

Hex from the command line is parsed here, with the command line's messages (`ConfigurationError`, exit 2), and
then given its type by `sidecar.domain`'s constructors, like every value entering the sidecar."""

from __future__ import annotations

from sidecar.domain import (
    PUBKEY_SIZE,
    ROOT_SIZE,
    GenesisRoot,
    Pubkey,
    valid_genesis_validators_root,
    valid_pubkey,
)
from sidecar.errors import ConfigurationError

__all__ = ["NETWORKS", "genesis_validators_root_for", "parse_hex", "parse_pubkey_hex", "parse_root_hex"]

NETWORKS: dict[str, str] = {
    "mainnet": "0x4b363db94e286120d76eb905340fdd4e54bfe9f06bf33ff6cf5ad27f511bfe95",
    "sepolia": "0xd8ea171f3c94aea21ebc42a1ed61052acf3f9209c00e4efbaaddac09ed9b8078",
    "holesky": "0x9143aa7c615a7f7115e2b6aac319c03529df8242ae705fba9df39b79c59fa8b1",
    "hoodi": "0x212f13fc4df078b6cb7db228f1c8307566dcecf900867401a92023d7ba99cb5f",
}


def parse_root_hex(text: str, what: str = "genesis validators root") -> GenesisRoot:
    """Parses a 0x-prefixed (or bare) 32-byte hex string."""
    return valid_genesis_validators_root(parse_hex(text, ROOT_SIZE, what))


def parse_pubkey_hex(text: str) -> Pubkey:
    """Parses a 0x-prefixed (or bare) 48-byte hex string."""
    return valid_pubkey(parse_hex(text, PUBKEY_SIZE, "pubkey"))


def parse_hex(text: str, size: int, what: str) -> bytes:
    """The bytes of hex `text` (0x-prefixed or bare), exactly `size` of them written as `2 * size` digits; raises
    ConfigurationError naming `what` otherwise."""
    body = text[2:] if text[:2] in ("0x", "0X") else text
    try:
        value = bytes.fromhex(body)
    except ValueError:
        raise ConfigurationError(f"{what} {text!r} is not hex") from None
    if len(value) != size or len(body) != size * 2:
        raise ConfigurationError(f"{what} {text!r} must be {size} bytes ({size * 2} hex digits)")
    return value


def genesis_validators_root_for(network: str) -> GenesisRoot:
    try:
        return parse_root_hex(NETWORKS[network])
    except KeyError:
        known = ", ".join(sorted(NETWORKS))
        raise ConfigurationError(f"unknown network {network!r}; known networks: {known}") from None
