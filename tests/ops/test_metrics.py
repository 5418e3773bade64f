"""The operator's HTTP endpoint: `--metrics-listen` with /metrics, /healthz and /readyz.

Most tests scrape a real `serve` subprocess started with `--metrics-listen 127.0.0.1:0` (its bound port is read
from the startup log); the readiness transitions that need a server held mid-recovery or mid-shutdown use the
in-process helper.
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from sidecar.vocabulary import decision_series, spelling, verdict
from slashing_protection.v1 import admin_pb2, signing_pb2
from tests.ops.support import SERVE_OPTIONS, Client, http_get, insecure_client
from tests.storage.fakes import FaultyFileOps
from tests.support.keys import pubkey, signing_root
from tests.support.processes import ServerProcess, serve_command, serving
from tests.support.requests import batch_request
from tests.support.server import running_server

pytestmark = pytest.mark.timeout(60)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
DECISIONS = "slashing_sidecar_decisions_total"
ALLOWED_LABELS = {"kind", "verdict", "reason", "le", "outcome"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("metrics")
    command = serve_command(*SERVE_OPTIONS, "--metrics-listen", "127.0.0.1:0", data_dir=directory / "data")
    with serving(command, directory / "serve.log") as process:
        yield process


@pytest.fixture(scope="module")
def port(server: ServerProcess) -> int:
    return server.metrics_port()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Client]:
    with insecure_client(server.address) as c:
        yield c


def scrape(port: int) -> tuple[dict[str, str], Samples, str]:
    """(family name -> type, samples by name and labels, raw text)."""
    status, text = http_get(port, "/metrics")
    assert status == 200
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return types, samples, text


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def decision_counts(samples: Samples) -> dict[tuple[str, str, str], float]:
    counts = {}
    for (name, labels), count in samples.items():
        if name == DECISIONS:
            label = dict(labels)
            counts[label["kind"], label["verdict"], label["reason"]] = count
    return counts


def test_port_zero_is_bound_and_named_in_the_log(server: ServerProcess, port: int) -> None:
    assert port != 0
    assert http_get(port, "/healthz") == (200, "ok\n")
    assert http_get(port, "/nowhere")[0] == 404


def test_readyz_is_200_while_serving(port: int, client: Client) -> None:
    assert client.health_status() == "SERVING"
    assert http_get(port, "/readyz")[0] == 200


def test_contract_metrics_are_exposed_with_their_types(port: int) -> None:
    types, samples, _ = scrape(port)
    assert types["slashing_sidecar_decisions"] == "counter"
    assert types["slashing_sidecar_decision_seconds"] == "histogram"
    assert types["slashing_sidecar_fsync_seconds"] == "histogram"
    assert types["slashing_sidecar_checkpoint_age_seconds"] == "gauge"
    assert types["slashing_sidecar_validators"] == "gauge"
    names = {name for name, _ in samples}
    for histogram in ("slashing_sidecar_decision_seconds", "slashing_sidecar_fsync_seconds"):
        assert {f"{histogram}_bucket", f"{histogram}_count", f"{histogram}_sum"} <= names


def test_decisions_total_counts_every_decision_by_kind_verdict_and_reason(port: int, client: Client) -> None:
    a, b, c = pubkey(10_000), pubkey(10_001), pubkey(10_002)
    client.register(a, b, c)
    _, before, _ = scrape(port)

    assert client.block(a, 5, signing_root(1)).reason == signing_pb2.REASON_ALLOWED_NEW
    assert client.block(a, 5, signing_root(1)).reason == signing_pb2.REASON_ALLOWED_REPEAT
    assert client.block(a, 5, signing_root(2)).reason == signing_pb2.REASON_DOUBLE_PROPOSAL
    assert client.block(pubkey(10_099), 5, signing_root(1)).reason == signing_pb2.REASON_VALIDATOR_NOT_REGISTERED
    assert client.attestation(b, 2, 3, signing_root(3)).reason == signing_pb2.REASON_ALLOWED_NEW
    assert client.attestation(b, 1, 4, signing_root(4)).reason == signing_pb2.REASON_SURROUNDS_RECORDED_VOTE
    batch = client.signing.CheckAndRecordAttestations(
        batch_request([(b, 3, 4, signing_root(5)), (c, 3, 4, signing_root(5))]), timeout=10
    )
    assert [d.reason for d in batch.decisions] == [signing_pb2.REASON_ALLOWED_NEW] * 2
    rpcs = 7

    _, after, _ = scrape(port)
    counts_before, counts_after = decision_counts(before), decision_counts(after)
    delta = {k: v - counts_before.get(k, 0) for k, v in counts_after.items() if v != counts_before.get(k, 0)}
    assert delta == {
        ("block", "allowed", "allowed_new"): 1,
        ("block", "allowed", "allowed_repeat"): 1,
        ("block", "refused", "double_proposal"): 1,
        ("block", "refused", "validator_not_registered"): 1,
        ("attestation", "allowed", "allowed_new"): 3,
        ("attestation", "refused", "surrounds_recorded_vote"): 1,
    }

    def grew(name: str) -> float:
        return value(after, name) - value(before, name)

    assert grew("slashing_sidecar_decision_seconds_count") == rpcs
    assert grew("slashing_sidecar_decision_seconds_sum") > 0
    assert grew("slashing_sidecar_fsync_seconds_count") > 0  # every allowed decision waited for an fsync


def test_validators_gauge_follows_registrations(port: int, client: Client) -> None:
    before = value(scrape(port)[1], "slashing_sidecar_validators")
    keys = [pubkey(11_000 + i) for i in range(3)]
    client.register(*keys)
    assert value(scrape(port)[1], "slashing_sidecar_validators") == before + 3
    client.register(*keys)
    assert value(scrape(port)[1], "slashing_sidecar_validators") == before + 3


def test_checkpoint_age_grows_and_resets_on_a_checkpoint(port: int, client: Client) -> None:
    age = "slashing_sidecar_checkpoint_age_seconds"
    first = value(scrape(port)[1], age)
    time.sleep(0.3)
    second = value(scrape(port)[1], age)
    assert second >= first + 0.25
    client.admin.SaveCheckpoint(admin_pb2.SaveCheckpointRequest(), timeout=10)
    third = value(scrape(port)[1], age)
    assert 0 <= third < second


def test_no_metric_carries_a_pubkey(port: int, client: Client) -> None:
    keys = [pubkey(12_000 + i) for i in range(4)]
    client.register(*keys)
    for slot, key in enumerate(keys, start=1):
        client.block(key, slot, signing_root(1))
        client.block(key, slot, signing_root(2))  # a refusal too: refusals must not be labelled by key either
    _, samples, text = scrape(port)
    assert text.count("\n") > 20
    for key in keys:
        assert key.hex() not in text.lower()
    for name, labels in samples:
        assert {label for label, _ in labels} <= ALLOWED_LABELS, (name, labels)


# ---------------------------------------------------------------- readiness transitions (in process)


def metrics_port_of(running) -> int:
    # The in-process server bound "127.0.0.1:0"; its endpoint knows the port it got.
    return int(running.server._metrics_http.port)


def test_readyz_is_503_until_recovery_finishes(tmp_path: Path) -> None:
    with running_server(tmp_path / "data", recover=False, metrics_listen="127.0.0.1:0") as running:
        port = metrics_port_of(running)
        assert http_get(port, "/healthz")[0] == 200
        assert http_get(port, "/readyz")[0] == 503
        running.call(running.server.recover())
        assert http_get(port, "/readyz")[0] == 200


def test_readyz_is_503_as_soon_as_shutdown_begins(tmp_path: Path) -> None:
    with running_server(tmp_path / "data", metrics_listen="127.0.0.1:0") as running:
        port = metrics_port_of(running)
        assert http_get(port, "/readyz")[0] == 200
        # A health watch is a call in flight: it holds the drain open, so the endpoint can be asked mid-shutdown.
        with grpc.insecure_channel(running.address) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            stopping = asyncio.run_coroutine_threadsafe(running.server.stop(grace=10), running.loop)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert not stopping.done()
            assert http_get(port, "/readyz")[0] == 503
            assert http_get(port, "/healthz")[0] == 200
            watch.cancel()
            stopping.result(15)


# ---------------------------------------------------------------- series that exist before their first event


def test_every_decision_series_and_import_outcome_exists_at_zero_from_the_start(tmp_path: Path) -> None:
    """Prometheus cannot see a series' first increase if the series appears already at 1 (see sidecar.metrics):
    a fresh server exposes every (kind, verdict, reason) it can ever count, and both import outcomes, at 0."""
    options = ("--metrics-listen", "127.0.0.1:0", "--checkpoint-interval", "120")
    with serving(
        serve_command(*SERVE_OPTIONS, *options, data_dir=tmp_path / "data"), tmp_path / "serve.log"
    ) as process:
        _, samples, _ = scrape(process.metrics_port())
    counts = decision_counts(samples)
    assert counts == {(kind, verdict(reason), spelling(reason)): 0.0 for kind, reason in decision_series()}
    for kind, verdict_, reason in [
        ("block", "refused", "double_proposal"),
        ("attestation", "refused", "double_vote"),
        ("attestation", "refused", "surrounds_recorded_vote"),
        ("attestation", "refused", "surrounded_by_recorded_vote"),
        ("block", "allowed", "allowed_new"),
        ("attestation", "refused", "validator_not_registered"),
    ]:
        assert (kind, verdict_, reason) in counts
    assert value(samples, "slashing_sidecar_imports_total", outcome="refused") == 0
    assert ("slashing_sidecar_imports_total", frozenset({("outcome", "imported")})) in samples
    assert ("slashing_sidecar_log_failures_total", frozenset()) in samples
    assert value(samples, "slashing_sidecar_serving") == 1
    assert value(samples, "slashing_sidecar_log_healthy") == 1
    assert value(samples, "slashing_sidecar_checkpoint_interval_seconds") == 120
    free = value(samples, "slashing_sidecar_data_dir_free_bytes")
    size = value(samples, "slashing_sidecar_data_dir_size_bytes")
    stat = os.statvfs(tmp_path)
    assert 0 < free <= size == stat.f_blocks * stat.f_frsize
    assert value(samples, "process_start_time_seconds") > 0


def test_a_durability_failure_is_counted_and_serving_follows_it(tmp_path: Path) -> None:
    fileops = FaultyFileOps()
    with running_server(tmp_path / "data", metrics_listen="127.0.0.1:0", fileops=fileops) as running:
        port = metrics_port_of(running)
        client = Client(running.channel)
        key = pubkey(13)
        client.register(key)
        _, samples, _ = scrape(port)
        assert (
            value(samples, "slashing_sidecar_log_failures_total"),
            value(samples, "slashing_sidecar_serving"),
        ) == (
            0,
            1,
        )

        fileops.fail("fdatasync", errno.EIO)
        with pytest.raises(grpc.RpcError) as caught:
            client.block(key, 1, signing_root(1))
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE

        def failed() -> bool:
            _, now, _ = scrape(port)
            return (
                value(now, "slashing_sidecar_log_failures_total") == 1
                and value(now, "slashing_sidecar_log_healthy") == 0
                and value(now, "slashing_sidecar_serving") == 0
            )

        wait_until(failed)
        fileops.heal()

        def healed() -> bool:
            _, now, _ = scrape(port)
            return value(now, "slashing_sidecar_log_healthy") == 1 and value(now, "slashing_sidecar_serving") == 1

        wait_until(healed)
        assert value(scrape(port)[1], "slashing_sidecar_log_failures_total") == 1


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{condition.__name__} not reached within {timeout} s"
        time.sleep(0.1)
