"""The Kubernetes example of docs/high-availability.md is checked against the real command line: every argument
parses as `slashing-sidecar serve` parses it, every environment variable is one `serve` reads, and the probes and
ports agree with the options they depend on. An operator copies this example; it must not drift from the code."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.cli import build_parser

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "high-availability.md"


def manifests() -> list[dict[str, Any]]:
    blocks = re.findall(r"```yaml\n(.*?)```", GUIDE.read_text(), re.S)
    assert blocks, f"no yaml example in {GUIDE}"
    return [document for block in blocks for document in yaml.safe_load_all(block) if document]


def deployment() -> dict[str, Any]:
    found = [document for document in manifests() if document["kind"] == "Deployment"]
    assert len(found) == 1
    return found[0]


def container() -> dict[str, Any]:
    containers = deployment()["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def serve_help() -> str:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return str(action.choices["serve"].format_help())
    raise AssertionError("the parser has no commands")


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def test_the_example_arguments_are_a_valid_serve_command_line() -> None:
    args = build_parser().parse_args(container()["args"])
    assert args.command == "serve"
    assert args.data_dir is None, "a replica keeps no data directory"


def test_the_example_environment_is_read_by_serve() -> None:
    read = set(re.findall(r"SLASHING_SIDECAR_[A-Z_]+", serve_help()))
    names = {variable["name"] for variable in container()["env"]}
    assert "SLASHING_SIDECAR_DATABASE_URL" in names
    assert names <= read, names - read


def test_the_example_probes_and_ports_match_the_options() -> None:
    spec = container()
    args = build_parser().parse_args(spec["args"])
    ports = {port["name"]: port["containerPort"] for port in spec["ports"]}
    assert ports["grpc"] == port_of(args.listen)
    assert ports["metrics"] == port_of(args.metrics_listen)
    assert spec["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert spec["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    grace = deployment()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > float(args.shutdown_grace)


@pytest.mark.parametrize("kind", ["Service", "PodDisruptionBudget"])
def test_the_example_selects_the_deployments_pods(kind: str) -> None:
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    (document,) = [document for document in manifests() if document["kind"] == kind]
    selector = document["spec"]["selector"]
    selector = selector.get("matchLabels", selector)
    assert selector.items() <= labels.items()
    if kind == "PodDisruptionBudget":
        assert document["spec"]["minAvailable"] < deployment()["spec"]["replicas"]
