"""The operator kit against a real Prometheus (the Debian package's server, on a free loopback port, with its
storage in a temporary directory), scraping a real `serve` process every second while a bounded load runs:

* the shipped alert rules load, and every rule evaluates with health "ok";
* the first slashable refusal fires SlashingSidecarSlashableMessageRefused (no `for`; deterministic because every
  decision series exists at 0 before it, and it is only provoked after Prometheus has scraped those zeros);
* a refused import fires SlashingSidecarImportFailed the same way;
* every panel query of the Grafana dashboard evaluates through the HTTP API to at least one number;
* every alert expression evaluates through the HTTP API without error.
"""

from __future__ import annotations

import json
import math
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from slashing_protection.v1 import interchange_pb2, interchange_pb2_grpc, signing_pb2
from tests.ops.support import SERVE_OPTIONS, Client, insecure_client
from tests.support.binaries import require_binary
from tests.support.keys import ZERO_ROOT_HEX, pubkey, signing_root
from tests.support.processes import REPOSITORY, serve_command, serving
from tests.support.requests import batch_request

pytestmark = pytest.mark.timeout(120)

RULES = REPOSITORY / "deploy" / "prometheus" / "slashing-sidecar.rules.yml"
DASHBOARD = REPOSITORY / "deploy" / "grafana" / "slashing-sidecar.json"
DEADLINE = 40.0  # generous: a noisy 2-core machine; the whole test usually takes 10-15 s
# Grafana's variables, as Grafana would expand them for a short time range.
GRAFANA_VARIABLES = {"$__rate_interval": "15s", "$__range": "5m", "$__interval": "1s", "$instance": ".*"}
KEYS = [pubkey(70_000 + i) for i in range(16)]
SLASHED_KEY = pubkey(71)
UNREGISTERED_KEY = pubkey(73)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Prometheus:
    """A real `prometheus` process scraping one sidecar every second and evaluating the shipped rules."""

    def __init__(self, directory: Path, metrics_port: int) -> None:
        binary = require_binary("prometheus", "prometheus")
        directory.mkdir()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": "slashing-sidecar", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}
            ],
        }
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.log = (directory / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.directory = directory

    def get(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            with error:
                return json.loads(error.read())

    def query(self, expr: str) -> dict[str, Any]:
        """The API's answer to an instant query (status "success" or "error")."""
        answer: dict[str, Any] = self.get("/api/v1/query", query=expr)
        return answer

    def vector(self, expr: str) -> list[dict[str, Any]]:
        answer = self.query(expr)
        assert answer["status"] == "success", (expr, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def wait_ready(self) -> None:
        deadline = time.monotonic() + DEADLINE
        while True:
            assert self.process.poll() is None, f"prometheus exited: {self.output()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, f"prometheus not ready: {self.output()}"
            time.sleep(0.1)

    def output(self) -> str:
        self.log.flush()
        return (self.directory / "prometheus.log").read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()


def poll(what: str, check: Any, deadline: float | None = None) -> Any:
    """check() until it returns something truthy; fails naming `what` after the deadline."""
    end = time.monotonic() + (DEADLINE if deadline is None else deadline)
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.25)


def firing(prometheus: Prometheus, alertname: str) -> list[dict[str, str]]:
    return [
        sample["metric"] for sample in prometheus.vector(f'ALERTS{{alertname="{alertname}", alertstate="firing"}}')
    ]


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL with Grafana's variables expanded) for every target of every panel."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"unknown Grafana variable in {panel['title']!r}: {expr}"
            queries.append((panel["title"], expr))
    return queries


def alert_expressions() -> dict[str, str]:
    document = yaml.safe_load(RULES.read_text())
    return {rule["alert"]: rule["expr"] for group in document["groups"] for rule in group["rules"]}


class Load:
    """A bounded signing load in a thread: batches of new attestations for KEYS, a new block each round, and
    refusals that are not slashable (source after target; an unregistered key). Ends on stop() or after
    MAX_ROUNDS."""

    MAX_ROUNDS = 3000

    def __init__(self, client: Client) -> None:
        self._client = client
        self._stop = threading.Event()
        self.rounds = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for epoch in range(10, 10 + self.MAX_ROUNDS):
                if self._stop.is_set():
                    return
                batch = [(key, epoch - 1, epoch, signing_root(epoch)) for key in KEYS]
                self._client.signing.CheckAndRecordAttestations(batch_request(batch), timeout=10)
                self._client.block(KEYS[epoch % len(KEYS)], epoch, signing_root(epoch))
                refused = self._client.attestation(KEYS[0], epoch + 1, epoch, signing_root(1))
                assert refused.reason == signing_pb2.REASON_SOURCE_EPOCH_GREATER_THAN_TARGET_EPOCH, refused
                refused = self._client.block(UNREGISTERED_KEY, epoch, signing_root(1))
                assert refused.reason == signing_pb2.REASON_VALIDATOR_NOT_REGISTERED, refused
                self.rounds += 1
                self._stop.wait(0.02)
        except BaseException as error:  # reported by stop()
            self.error = error

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        if self.error is not None:
            raise self.error


def import_document(client: Client, document: bytes) -> None:
    stub = interchange_pb2_grpc.InterchangeServiceStub(client.channel)
    stub.ImportInterchange(iter([interchange_pb2.ImportInterchangeRequest(chunk=document)]), timeout=30)


def interchange(keys: list[bytes]) -> bytes:
    return json.dumps(
        {
            "metadata": {"interchange_format_version": "5", "genesis_validators_root": ZERO_ROOT_HEX},
            "data": [
                {
                    "pubkey": "0x" + key.hex(),
                    "signed_blocks": [{"slot": "3"}],
                    "signed_attestations": [{"source_epoch": "1", "target_epoch": "2"}],
                }
                for key in keys
            ],
        }
    ).encode()


@pytest.fixture
def prometheus_and_sidecar(tmp_path: Path) -> Iterator[tuple[Prometheus, Client]]:
    require_binary("prometheus", "prometheus")
    options = ("--metrics-listen", "127.0.0.1:0", "--checkpoint-interval", "1")
    with serving(
        serve_command(*SERVE_OPTIONS, *options, data_dir=tmp_path / "data"), tmp_path / "serve.log"
    ) as server:
        metrics_port = server.metrics_port()
        prometheus = Prometheus(tmp_path / "prometheus", metrics_port)
        try:
            prometheus.wait_ready()
            with insecure_client(server.address) as client:
                yield prometheus, client
        finally:
            prometheus.stop()


def test_dashboard_and_alerts_against_a_real_prometheus(prometheus_and_sidecar: tuple[Prometheus, Client]) -> None:
    prometheus, client = prometheus_and_sidecar
    client.register(*KEYS, SLASHED_KEY)

    # Prometheus has scraped the sidecar a few times, so every decision series is on record at 0, and has
    # evaluated every shipped rule without error.
    poll("three scrapes", lambda: prometheus.vector('count_over_time(up{job="slashing-sidecar"}[1m]) >= 3'))
    assert prometheus.vector('up{job="slashing-sidecar"}')[0]["value"][1] == "1"
    slashable = f'slashing_sidecar_decisions_total{{verdict="refused", reason="{"double_vote"}"}}'
    assert [s["value"][1] for s in prometheus.vector(slashable)] == ["0"]

    def rules_evaluated() -> list[dict[str, Any]] | None:
        groups = prometheus.get("/api/v1/rules")["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        if len(rules) != len(alert_expressions()) or any(r["lastEvaluation"].startswith("0001") for r in rules):
            return None
        return rules

    for rule in poll("every rule evaluated", rules_evaluated):
        assert rule["health"] == "ok", rule
    assert firing(prometheus, "SlashingSidecarSlashableMessageRefused") == []
    assert firing(prometheus, "SlashingSidecarImportFailed") == []

    load = Load(client)
    try:
        import_document(client, interchange([pubkey(72_000 + i) for i in range(5)]))
        with pytest.raises(grpc.RpcError) as refused:
            import_document(client, b'{"metadata": ')
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        poll("load seen by Prometheus", lambda: prometheus.vector("sum(slashing_sidecar_decisions_total) > 200"))

        # The first slashable refusal.
        assert client.attestation(SLASHED_KEY, 1, 2, signing_root(1)).reason == signing_pb2.REASON_ALLOWED_NEW
        assert client.attestation(SLASHED_KEY, 1, 2, signing_root(2)).reason == signing_pb2.REASON_DOUBLE_VOTE
        (alert,) = poll(
            "the slashable alert", lambda: firing(prometheus, "SlashingSidecarSlashableMessageRefused")
        )
        assert (alert["kind"], alert["verdict"], alert["reason"], alert["severity"]) == (
            "attestation",
            "refused",
            "double_vote",
            "critical",
        )
        (alert,) = poll("the import alert", lambda: firing(prometheus, "SlashingSidecarImportFailed"))
        assert alert["outcome"] == "refused"

        # Every panel of the dashboard shows a number (NaN, e.g. a quantile of nothing, counts as nothing).
        missing: dict[str, str] = {}
        deadline = time.monotonic() + DEADLINE
        for title, expr in panel_queries():
            while True:
                answer = prometheus.query(expr)
                assert answer["status"] == "success", (title, expr, answer)
                values = [float(sample["value"][1]) for sample in answer["data"]["result"]]
                if any(math.isfinite(value) for value in values):
                    missing.pop(title, None)
                    break
                missing[title] = expr
                if time.monotonic() > deadline:
                    break
                time.sleep(0.25)
        assert missing == {}, f"panels with no data: {missing}"
    finally:
        load.stop()
    assert load.rounds > 0

    # Every alert expression parses and evaluates (most match nothing on a healthy sidecar: that is fine).
    for name, expr in alert_expressions().items():
        answer = prometheus.query(expr)
        assert answer["status"] == "success", (name, answer)
    assert not re.search(r"level=error", prometheus.output()), prometheus.output()
