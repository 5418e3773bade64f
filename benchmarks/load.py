"""The load generator: grpc.aio clients driving ``SlashingProtectionService``, in one or several processes.

Two shapes of load:

- :class:`ClosedLoop`: ``lanes`` callers, each keeping exactly one call in flight (so "64 in flight" is 64
  lanes). Each lane owns its validators, so no validator ever has two calls in flight and every validator's
  target epochs increase in the order the server sees them. A lane owns ``groups_per_lane`` groups of
  ``batch_size`` validators and cycles through them; round ``k`` of a lane sends group ``k % groups`` at target
  epoch ``start_epoch + k // groups``. Unary load is the same with ``batch_size = 1``.
  Throughput counts completions inside the measurement window (after the warm-up, until the clock or the lanes'
  round budget runs out); latencies are those of calls started inside the window.
- :class:`Burst`: a fixed set of prepared batches (one slot's attestations), ``in_flight`` at a time; the figure
  is the wall time from the go signal until the last answer.

With several processes, lanes are dealt round-robin to processes spawned fresh for the scenario; they start
together at a go time on the system-wide monotonic clock, which ``time.monotonic`` reads on Linux.

Several servers (replicas sharing one database): :func:`drive_many` deals the lanes round-robin over their
addresses, lane ``i`` to address ``i % n``, whichever process runs it. A lane owns its validators, so each
validator is always decided by the same replica, as when each validator client talks to one replica. With one
address it is :func:`drive`, call for call.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import multiprocessing
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import grpc

from benchmarks.common import (
    attestation_request,
    attestations_request,
    machine_busy_seconds,
    open_channel,
    percentile,
    process_cpu_seconds,
    pubkeys,
)
from slashing_protection.v1 import signing_pb2, signing_pb2_grpc

CALL_TIMEOUT_S = 30.0
MAX_ERRORS_PER_LANE = 20  # a lane that keeps failing stops instead of spinning
_ALLOWED = signing_pb2.VERDICT_ALLOWED


@dataclass(frozen=True)
class ClosedLoop:
    rpc: str  # "unary" (CheckAndRecordAttestation) or "batch" (CheckAndRecordAttestations)
    lanes: int
    batch_size: int
    groups_per_lane: int
    first_validator: int
    start_epoch: int = 1
    warmup_s: float = 0.0
    duration_s: float = 1.0
    max_rounds_per_lane: int | None = None

    def __post_init__(self) -> None:
        if self.rpc not in ("unary", "batch"):
            raise ValueError(f"unknown rpc {self.rpc!r}")
        if self.rpc == "unary" and self.batch_size != 1:
            raise ValueError("unary load sends one attestation per call")
        if self.start_epoch < 1:
            raise ValueError("the first target epoch is 1 (source epoch 0)")

    @property
    def validators(self) -> int:
        return self.lanes * self.groups_per_lane * self.batch_size

    def group_first_validator(self, lane: int, group: int) -> int:
        return self.first_validator + (lane * self.groups_per_lane + group) * self.batch_size


@dataclass(frozen=True)
class Burst:
    first_validator: int
    count: int
    batch_size: int
    in_flight: int
    cap_s: float

    @property
    def batches(self) -> int:
        return -(-self.count // self.batch_size)


@dataclass
class Part:
    """What one client process measured."""

    completions: list[float] = field(default_factory=list)  # monotonic end time of each successful call
    decisions: list[int] = field(default_factory=list)  # decisions carried by each successful call
    latencies: list[float] = field(default_factory=list)  # calls started inside the window
    refused: int = 0
    errors: int = 0
    problem: str | None = None
    cpu_s: float = 0.0
    go: float = 0.0
    window_start: float = 0.0
    window_end: float = 0.0  # the clock's end of the window (closed loop)
    capped: bool = False

    def note(self, problem: str) -> None:
        if self.problem is None:
            self.problem = problem


@dataclass
class LoadSummary:
    calls: int
    decisions: int
    window_s: float
    p50_s: float
    p99_s: float
    client_procs: int
    client_cores: float
    refused: int
    errors: int
    problem: str | None
    capped: bool = False
    wall_s: float = 0.0  # go signal to last answer
    server_cores: float | None = None  # CPU of the server process(es) while the load ran, summed
    other_cores: float | None = None  # CPU of everything else on the machine meanwhile: the noise
    server_cores_each: tuple[float, ...] = ()  # per server process, when there are several (drive_many)
    database_cores: float | None = None  # CPU of the database server's processes, when watched (drive_many)

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.window_s if self.window_s > 0 else 0.0

    @property
    def decisions_per_s(self) -> float:
        return self.decisions / self.window_s if self.window_s > 0 else 0.0

    @property
    def clean(self) -> bool:
        return self.refused == 0 and self.errors == 0


# --- one process's share -----------------------------------------------------------------------------------------


def _check_decisions(part: Part, decisions: Sequence[signing_pb2.SigningDecision]) -> None:
    for decision in decisions:
        if decision.verdict != _ALLOWED:
            part.refused += 1
            part.note(
                f"refused: {signing_pb2.Reason.Name(decision.reason)} {decision.message}".strip()
                + " (every request of the harness is ALLOWED-able: a server or harness bug)"
            )


def _error_text(error: grpc.aio.AioRpcError) -> str:
    return f"{error.code().name}: {error.details()}"


async def _closed_loop_lane(
    stub: signing_pb2_grpc.SlashingProtectionServiceStub,
    spec: ClosedLoop,
    lane: int,
    part: Part,
) -> None:
    groups = [
        pubkeys(spec.group_first_validator(lane, group), spec.batch_size) for group in range(spec.groups_per_lane)
    ]
    rounds = 0
    errors = 0
    while True:
        if time.monotonic() >= part.window_end:
            return
        if spec.max_rounds_per_lane is not None and rounds >= spec.max_rounds_per_lane:
            return
        group = rounds % spec.groups_per_lane
        epoch = spec.start_epoch + rounds // spec.groups_per_lane
        first = spec.group_first_validator(lane, group)
        started = time.monotonic()
        try:
            if spec.rpc == "unary":
                request = attestation_request(groups[group][0], first, epoch)
                response = await stub.CheckAndRecordAttestation(request, timeout=CALL_TIMEOUT_S)
                decisions: Sequence[signing_pb2.SigningDecision] = [response.decision]
            else:
                batch = attestations_request(groups[group], first, epoch)
                batch_response = await stub.CheckAndRecordAttestations(batch, timeout=CALL_TIMEOUT_S)
                decisions = batch_response.decisions
                if len(decisions) != spec.batch_size:
                    part.note(f"{len(decisions)} decisions for a batch of {spec.batch_size}")
        except grpc.aio.AioRpcError as error:
            part.errors += 1
            part.note(_error_text(error))
            errors += 1
            if errors >= MAX_ERRORS_PER_LANE:
                return
            rounds += 1  # never reuse an epoch the server may have recorded before failing
            continue
        ended = time.monotonic()
        _check_decisions(part, decisions)
        part.completions.append(ended)
        part.decisions.append(len(decisions))
        if started >= part.window_start:
            part.latencies.append(ended - started)
        rounds += 1


@contextlib.asynccontextmanager
async def _stubs(addresses: Sequence[str]) -> AsyncIterator[list[signing_pb2_grpc.SlashingProtectionServiceStub]]:
    """One connected channel per address; lane ``i`` uses the stub of address ``i % len(addresses)``."""
    async with contextlib.AsyncExitStack() as stack:
        stubs = []
        for address in addresses:
            channel = await stack.enter_async_context(open_channel(address))
            await channel.channel_ready()
            stubs.append(signing_pb2_grpc.SlashingProtectionServiceStub(channel))
        yield stubs


async def run_closed_loop_part(
    addresses: Sequence[str], spec: ClosedLoop, proc: int, procs: int, go: float
) -> Part:
    part = Part(go=go, window_start=go + spec.warmup_s, window_end=go + spec.warmup_s + spec.duration_s)
    lanes = range(proc, spec.lanes, procs)
    async with _stubs(addresses) as stubs:
        await asyncio.sleep(max(0.0, go - time.monotonic()))
        cpu0 = time.process_time()
        await asyncio.gather(*(_closed_loop_lane(stubs[lane % len(stubs)], spec, lane, part) for lane in lanes))
        part.cpu_s = time.process_time() - cpu0
    return part


def _burst_batches(
    spec: Burst, proc: int, procs: int
) -> list[tuple[int, signing_pb2.CheckAndRecordAttestationsRequest]]:
    prepared = []
    for batch in range(proc, spec.batches, procs):
        first = spec.first_validator + batch * spec.batch_size
        size = min(spec.batch_size, spec.first_validator + spec.count - first)
        prepared.append((size, attestations_request(pubkeys(first, size), first, 1)))
    return prepared


async def run_burst_part(addresses: Sequence[str], spec: Burst, proc: int, procs: int, go: float) -> Part:
    part = Part(go=go, window_start=go)
    queue = collections.deque(_burst_batches(spec, proc, procs))  # built before the go: not timed
    lanes = spec.in_flight // procs + (1 if proc < spec.in_flight % procs else 0)

    async def lane(stub: signing_pb2_grpc.SlashingProtectionServiceStub) -> None:
        while queue:
            size, request = queue.popleft()
            started = time.monotonic()
            try:
                response = await stub.CheckAndRecordAttestations(request, timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as error:
                part.errors += 1
                part.note(_error_text(error))
                continue
            ended = time.monotonic()
            if len(response.decisions) != size:
                part.note(f"{len(response.decisions)} decisions for a batch of {size}")
            _check_decisions(part, response.decisions)
            part.completions.append(ended)
            part.decisions.append(len(response.decisions))
            part.latencies.append(ended - started)

    async with _stubs(addresses) as stubs:
        await asyncio.sleep(max(0.0, go - time.monotonic()))
        cpu0 = time.process_time()
        # This process's lanes are global lanes proc, proc + procs, ...: spread over the addresses like those.
        tasks = [
            asyncio.ensure_future(lane(stubs[(proc + index * procs) % len(stubs)]))
            for index in range(max(1, lanes))
        ]
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, go + spec.cap_s - time.monotonic()))
        if pending:
            part.capped = True
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        part.cpu_s = time.process_time() - cpu0
    return part


async def _run_part(addresses: Sequence[str], spec: ClosedLoop | Burst, proc: int, procs: int, go: float) -> Part:
    if isinstance(spec, ClosedLoop):
        return await run_closed_loop_part(addresses, spec, proc, procs, go)
    return await run_burst_part(addresses, spec, proc, procs, go)


async def _connect_all(addresses: Sequence[str]) -> None:
    async with _stubs(addresses):
        pass


# --- several processes -------------------------------------------------------------------------------------------


def _worker(conn: Connection, addresses: Sequence[str], spec: ClosedLoop | Burst, proc: int, procs: int) -> None:
    async def main() -> Part:
        await _connect_all(addresses)  # connect (and import everything) before the go
        conn.send("ready")
        go = await asyncio.to_thread(conn.recv)
        return await _run_part(addresses, spec, proc, procs, go)

    try:
        conn.send(asyncio.run(main()))
    except Exception as error:  # the parent reports it; a traceback in a child helps nobody
        conn.send(f"client process {proc} failed: {type(error).__name__}: {error}")
    finally:
        conn.close()


def _expected_duration(spec: ClosedLoop | Burst) -> float:
    if isinstance(spec, ClosedLoop):
        return spec.warmup_s + spec.duration_s + CALL_TIMEOUT_S
    return spec.cap_s + 5.0


async def _recv(conn: Connection, timeout_s: float) -> object:
    def receive() -> object:
        if not conn.poll(timeout_s):
            raise TimeoutError(f"client process silent for {timeout_s:.0f} s")
        return conn.recv()

    return await asyncio.to_thread(receive)


PidSource = Callable[[], Iterable[int]]  # the processes of a server that forks (a database), as of now


@dataclass
class _Watch:
    """Whose CPU a load run reports besides the machine's: the servers, and a database's processes."""

    server_pids: Sequence[int] = ()
    database_pids: PidSource | None = None


@dataclass
class _Sample:
    at: float
    busy: float
    servers: list[float | None]
    database: dict[int, float] | None  # CPU seconds per process of the database server, at this sample

    @staticmethod
    def take(watch: _Watch) -> _Sample:
        servers = [process_cpu_seconds(pid) for pid in watch.server_pids]
        database = None
        if watch.database_pids is not None:
            database = {}
            for pid in watch.database_pids():
                seconds = process_cpu_seconds(pid)
                if seconds is not None:
                    database[pid] = seconds
        return _Sample(time.monotonic(), machine_busy_seconds(), servers, database)


async def _run_parts(
    addresses: Sequence[str], spec: ClosedLoop | Burst, procs: int, watch: _Watch
) -> tuple[list[Part], _Sample, _Sample]:
    """Runs the load and samples the machine's CPU counters at the go and after the last answer."""
    if procs == 1:
        await _connect_all(addresses)
        before = _Sample.take(watch)
        part = await _run_part(addresses, spec, 0, 1, time.monotonic() + 0.02)
        return [part], before, _Sample.take(watch)
    context = multiprocessing.get_context("spawn")  # gRPC does not survive fork
    workers = []
    for proc in range(procs):
        parent, child = context.Pipe()
        process = context.Process(target=_worker, args=(child, tuple(addresses), spec, proc, procs), daemon=True)
        process.start()
        child.close()
        workers.append((process, parent))
    try:
        for _, conn in workers:
            ready = await _recv(conn, 60.0)
            if ready != "ready":
                raise RuntimeError(str(ready))
        go = time.monotonic() + 0.05
        for _, conn in workers:
            conn.send(go)
        await asyncio.sleep(max(0.0, go - time.monotonic()))
        before = _Sample.take(watch)
        parts = []
        for _, conn in workers:
            answer = await _recv(conn, _expected_duration(spec) + 30.0)
            if not isinstance(answer, Part):
                raise RuntimeError(str(answer))
            parts.append(answer)
        return parts, before, _Sample.take(watch)
    finally:
        for process, conn in workers:
            conn.close()
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()


def _merge(parts: list[Part], procs: int) -> LoadSummary:
    completions = [c for part in parts for c in part.completions]
    decisions = [d for part in parts for d in part.decisions]
    latencies = [latency for part in parts for latency in part.latencies]
    window_start = parts[0].window_start
    last = max(completions, default=window_start)
    window_end = min(parts[0].window_end, last) if parts[0].window_end else last
    inside = [d for c, d in zip(completions, decisions, strict=True) if window_start <= c <= window_end]
    wall = last - parts[0].go
    return LoadSummary(
        calls=len(inside),
        decisions=sum(inside),
        window_s=max(0.0, window_end - window_start),
        p50_s=percentile(latencies, 0.50),
        p99_s=percentile(latencies, 0.99),
        client_procs=procs,
        client_cores=sum(part.cpu_s for part in parts) / wall if wall > 0 else 0.0,
        refused=sum(part.refused for part in parts),
        errors=sum(part.errors for part in parts),
        problem=next((part.problem for part in parts if part.problem), None),
        capped=any(part.capped for part in parts),
        wall_s=wall,
    )


async def drive(
    address: str, spec: ClosedLoop | Burst, *, procs: int = 1, server_pid: int | None = None
) -> LoadSummary:
    """Runs ``spec`` against the server at ``address`` from ``procs`` client processes (1: this process).

    With ``server_pid``, also reports the server's CPU and everything else's while the load ran.
    """
    return await drive_many([address], spec, procs=procs, server_pids=() if server_pid is None else [server_pid])


async def drive_many(
    addresses: Sequence[str],
    spec: ClosedLoop | Burst,
    *,
    procs: int = 1,
    server_pids: Sequence[int] = (),
    database_pids: PidSource | None = None,
) -> LoadSummary:
    """Runs ``spec`` against the servers at ``addresses``, lane ``i`` on address ``i % len(addresses)``, from
    ``procs`` client processes (1: this process).

    With ``server_pids``, also reports those processes' CPU (summed, and each when there are several); with
    ``database_pids``, the CPU of the processes it lists (asked at the go and after the last answer: a database
    forks a process per connection); and everything else's while the load ran.
    """
    if not addresses:
        raise ValueError("no address to drive")
    if isinstance(spec, ClosedLoop):
        procs = max(1, min(procs, spec.lanes))
    else:
        procs = max(1, min(procs, spec.in_flight, spec.batches))
    watch = _Watch(server_pids, database_pids)
    parts, before, after = await _run_parts(addresses, spec, procs, watch)
    summary = _merge(parts, procs)
    elapsed = after.at - before.at
    if elapsed > 0:
        each = [
            None if start is None or end is None else (end - start) / elapsed
            for start, end in zip(before.servers, after.servers, strict=True)
        ]
        server = None
        if each and all(cores is not None for cores in each):
            known = [cores for cores in each if cores is not None]
            server = sum(known)
            summary.server_cores = server
            if len(known) > 1:
                summary.server_cores_each = tuple(known)
        database = None
        if before.database is not None and after.database is not None:
            # A process born during the run counts from zero; one that ended is lost (rare: pools keep theirs).
            database = sum(max(0.0, end - before.database.get(pid, 0.0)) for pid, end in after.database.items())
            database /= elapsed
            summary.database_cores = database
        client = sum(part.cpu_s for part in parts) / elapsed
        busy = (after.busy - before.busy) / elapsed
        summary.other_cores = max(0.0, busy - client - (server or 0.0) - (database or 0.0))
    return summary
