"""`serve` and `health` as an operator runs them: first start, refused starts, presets, environment, signals."""

from __future__ import annotations

import json
import signal
import socket
import stat
from pathlib import Path

import pytest

from tests.cli.conftest import (
    MAINNET,
    NETWORK_ROOTS,
    OTHER_ROOT,
    ServeFactory,
    assert_eip3076_v5,
    assert_fails,
    error_line,
    grpc_export,
    run_ok,
)
from tests.support.keys import pubkey_hex
from tests.support.processes import SERVING_ON, run_cli

KEY = pubkey_hex(0xA1)


def checkpoints(data_dir: Path) -> set[str]:
    directory = data_dir / "checkpoints"
    return {p.name for p in directory.iterdir()} if directory.is_dir() else set()


def test_first_start_creates_dir_0700_and_sigterm_exits_0_with_final_checkpoint(
    tmp_path: Path, serve: ServeFactory
) -> None:
    data_dir = tmp_path / "new" / "data"
    assert not data_dir.exists()
    sidecar = serve(data_dir, "--network", "mainnet", "--checkpoint-interval", "3600")
    assert data_dir.is_dir()
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700

    health = run_cli("health", "--server", sidecar.address)
    assert health.returncode == 0
    assert "SERVING" in health.stdout
    run_ok("register", "--server", sidecar.address, "--pubkey", KEY)
    before = checkpoints(data_dir)

    assert sidecar.stop(signal.SIGTERM) == 0
    assert "Traceback" not in sidecar.stderr
    written = checkpoints(data_dir) - before
    assert written, f"no final checkpoint written at SIGTERM (had {sorted(before)})"
    assert all(name.endswith(".ckpt") and (data_dir / "checkpoints" / name).stat().st_size > 0 for name in written)
    # Nobody listens any more.
    assert run_cli("health", "--server", sidecar.address, "--timeout", "2").returncode != 0

    # A later start needs no root option: the directory keeps its own, and its history.
    again = serve(data_dir)
    assert_eip3076_v5(grpc_export(again.address), MAINNET)
    summary = run_ok("summary", "--server", again.address, "--pubkey", KEY)
    assert json.loads(summary.stdout)["registered"] is True


@pytest.fixture(scope="module")
def mainnet_dir(tmp_path_factory: pytest.TempPathFactory, module_serve: ServeFactory) -> Path:
    """A data directory created by a first `serve --network mainnet`, then stopped."""
    data_dir = tmp_path_factory.mktemp("mainnet") / "data"
    sidecar = module_serve(data_dir, "--network", "mainnet")
    assert sidecar.stop() == 0
    return data_dir


@pytest.mark.parametrize(
    ("option", "value", "other"),
    [
        ("--network", "sepolia", NETWORK_ROOTS["sepolia"]),
        ("--genesis-validators-root", OTHER_ROOT, OTHER_ROOT),
    ],
    ids=["network", "root"],
)
def test_later_start_with_another_root_is_refused(
    mainnet_dir: Path, serve: ServeFactory, option: str, value: str, other: str
) -> None:
    identity = sorted(p.name for p in mainnet_dir.iterdir())
    refused = serve.launch(mainnet_dir, option, value)
    assert refused.wait_exit() != 0
    line = error_line(refused.stderr)
    assert MAINNET[2:] in line and other[2:] in line, line
    assert sorted(p.name for p in mainnet_dir.iterdir()) == identity


def test_new_dir_without_a_root_is_refused(tmp_path: Path, serve: ServeFactory) -> None:
    refused = serve.launch(tmp_path / "data")
    assert refused.wait_exit() != 0
    line = error_line(refused.stderr)
    assert "--network" in line or "--genesis-validators-root" in line, line
    assert not (tmp_path / "data" / "log").exists()


def test_second_serve_on_the_same_dir_is_refused_while_the_first_runs(tmp_path: Path, serve: ServeFactory) -> None:
    data_dir = tmp_path / "data"
    first = serve(data_dir, "--network", "mainnet")
    second = serve.launch(data_dir, "--network", "mainnet")
    assert second.wait_exit() != 0
    line = error_line(second.stderr)
    assert str(first.process.pid) in line, f"the refusal should name the holder: {line}"
    assert run_cli("health", "--server", first.address).returncode == 0


@pytest.mark.parametrize("network", sorted(NETWORK_ROOTS))
def test_network_presets(tmp_path: Path, serve: ServeFactory, network: str) -> None:
    sidecar = serve(tmp_path / "data", "--network", network)
    assert_eip3076_v5(grpc_export(sidecar.address), NETWORK_ROOTS[network])


@pytest.mark.parametrize("via", ["option", "environment"])
def test_unknown_network_is_a_usage_error(tmp_path: Path, via: str) -> None:
    data_dir = tmp_path / "data"
    if via == "option":
        result = run_cli("serve", "--data-dir", data_dir, "--network", "goerli", "--listen", "127.0.0.1:0")
    else:
        result = run_cli(
            "serve", "--data-dir", data_dir, "--listen", "127.0.0.1:0", env={"SLASHING_SIDECAR_NETWORK": "goerli"}
        )
    line = assert_fails(result, 2)
    assert "goerli" in line
    assert not data_dir.exists()


def test_environment_variables_configure_serve(tmp_path: Path, serve: ServeFactory) -> None:
    data_dir = tmp_path / "from-env"
    sidecar = serve(None, env={"SLASHING_SIDECAR_DATA_DIR": str(data_dir), "SLASHING_SIDECAR_NETWORK": "holesky"})
    assert data_dir.is_dir()
    assert_eip3076_v5(grpc_export(sidecar.address), NETWORK_ROOTS["holesky"])


def test_command_line_wins_over_environment(tmp_path: Path, serve: ServeFactory) -> None:
    sidecar = serve(
        tmp_path / "flag", "--network", "sepolia", env={"SLASHING_SIDECAR_DATA_DIR": str(tmp_path / "env")}
    )
    assert (tmp_path / "flag").is_dir()
    assert not (tmp_path / "env").exists()
    assert_eip3076_v5(grpc_export(sidecar.address), NETWORK_ROOTS["sepolia"])


def test_plaintext_on_a_non_loopback_address_is_refused(tmp_path: Path) -> None:
    result = run_cli("serve", "--data-dir", tmp_path / "data", "--network", "mainnet", "--listen", "0.0.0.0:0")
    line = assert_fails(result)
    assert "--insecure-listen" in line or "TLS" in line.upper(), line
    assert not (tmp_path / "data" / "IDENTITY.json").exists()


def test_insecure_listen_allows_plaintext_on_a_non_loopback_address(tmp_path: Path, serve: ServeFactory) -> None:
    sidecar = serve(tmp_path / "data", "--network", "mainnet", "--listen", "0.0.0.0:0", "--insecure-listen")
    assert sidecar.host == "0.0.0.0"
    assert run_cli("health", "--server", sidecar.address).returncode == 0


def test_json_logs_through_a_sigint_shutdown(tmp_path: Path, serve: ServeFactory) -> None:
    data_dir = tmp_path / "data"
    sidecar = serve(data_dir, "--network", "mainnet", "--log-format", "json")
    before = checkpoints(data_dir)
    assert sidecar.stop(signal.SIGINT) == 0
    assert checkpoints(data_dir) - before, "no final checkpoint written at SIGINT"
    lines = [line for line in sidecar.stderr.splitlines() if line.strip()]
    assert len(lines) >= 2  # at least "serving on" and the shutdown
    documents = [json.loads(line) for line in lines]
    assert all(isinstance(document, dict) for document in documents)
    assert any(SERVING_ON.search(json.dumps(document)) for document in documents)


def test_health_fails_when_nothing_listens() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_cli("health", "--server", f"127.0.0.1:{port}", "--timeout", "3")
    assert result.returncode != 0
    assert "SERVING" not in result.stdout.replace("NOT_SERVING", "")
