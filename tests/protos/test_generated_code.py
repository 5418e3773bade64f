"""The generated code in slashing_protection/ must be exactly what scripts/gen-protos makes from protos/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run(
        ["bash", str(REPO / "scripts" / "gen-protos"), str(tmp_path)],
        check=True,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
        cwd=REPO,
    )
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "slashing_protection").rglob("*.py*")}
    committed = {p.relative_to(REPO): p.read_bytes() for p in (REPO / "slashing_protection").rglob("*.py*")}
    assert fresh.keys() == committed.keys(), "generated file set differs: run scripts/gen-protos"
    stale = sorted(str(name) for name in fresh if fresh[name] != committed[name])
    assert not stale, f"stale generated code (run scripts/gen-protos): {stale}"


def test_contract_names_are_generated() -> None:
    from slashing_protection.v1 import admin_pb2, interchange_pb2, signing_pb2

    services = {
        name for module in (signing_pb2, interchange_pb2, admin_pb2) for name in module.DESCRIPTOR.services_by_name
    }
    assert services == {"SlashingProtectionService", "InterchangeService", "AdminService"}
    assert signing_pb2.DESCRIPTOR.package == "slashing_protection.v1"
    reasons = set(signing_pb2.Reason.keys())
    assert "REASON_UNSPECIFIED" in reasons and all(r.startswith("REASON_") for r in reasons)
    # Unspecified, the eleven reasons the contract names, and the high watermark's (an addition).
    assert len(reasons) == 13
