"""`sensorcast bench`: Sensorcast against a `websockets.broadcast()` reference server.

The servers under test run as subprocesses pinned to one core (`taskset -c 0`); this
process, the load generator, pins itself to another, so the server's CPU time is its own.

1. memory: RSS growth of a fresh server over N idle subscribed connections (5,000), per
   connection; each server alone.
2. headline: 1,000 subscribers x 20 publications/s, 20 s per server: server CPU us per
   delivery from /proc/<pid>/stat (utime+stime) and publish-to-receive latency p50/p99.
3. fan-out ramp: rising publication rates (x1.2 a step) until fewer than 99 % of the
   deliveries arrive by the end of the step plus a short grace; the best passing step is
   the "max deliveries/s".
4. ingest (Sensorcast only, see ingest.py): readings/s through POST /api/v1/readings in
   1,000-reading batches with 10 subscribers on `readings`, on SQLite and PostgreSQL,
   against a raw bulk insert of the same rows into the same kind of database.

For 2 and 3 both servers are up at once (same core, only one loaded at a time) and their
measurement windows alternate, because a shared VM's speed drifts by tens of percent over
minutes and sequential runs would put that drift into the ratios. Prints a table and writes
bench/results/bench-<UTC>.json and latest.json.

    python bench/run.py [--quick] [--only fanout,latency,memory,ingest,mqtt,sse] [--subscribers N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(BENCH_DIR) not in sys.path:  # imported as a module rather than run as a script
    sys.path.insert(0, str(BENCH_DIR))

import ingest  # noqa: E402  (needs the sys.path line above)
import latest  # noqa: E402
import loadgen as lg  # noqa: E402
import mqtt  # noqa: E402
import parsing  # noqa: E402
import scaleout  # noqa: E402
import sse as sse_bench  # noqa: E402
from procstat import (  # noqa: E402
    CLK_TCK,
    core_ticks,
    cpu_split,
    cpu_ticks,
    free_port,
    machine_busy,
    rss_kb,
    write_syscalls,
)

HOST = "127.0.0.1"
CHANNEL = "bench"
PUB_CHANNEL = "bench-pub"
# SO_RCVLOWAT that keeps a subscriber asleep for a whole latency window (20/s x 260 B x
# 10 s is ~52 KB); the kernel grows the receive buffer to match.
HOLD_BYTES = 256 * 1024
SERVERS = ("sensorcast", "reference")
PHASES = ("fanout", "latency", "memory", "ingest", "mqtt", "scaleout", "latest", "sse", "parse")

# Targets for Sensorcast / reference ratios (and one absolute bound).
TARGET_CPU_RATIO = 0.8
TARGET_THROUGHPUT_RATIO = 1.3
TARGET_P99_RATIO = 1.0
TARGET_MEMORY_RATIO = 1.0
TARGET_MEMORY_KB = 12.0

DEFAULT_DB = "sqlite:///var/bench.db"
BENCH_CONFIG = """\
server: {{host: {host}, port: {port}}}
database: {{url: "{database_url}"}}
ws: {{rate_limit: 0, max_connections: 0, max_connections_per_ip: 0, heartbeat: 0, \
max_queue_bytes: 4194304}}
channels: {{namespaces: {{bench: {{subscribe: [anonymous, user, device, service, admin], \
publish: [anonymous, user, device, service, admin]}}}}}}
logging: {{level: WARNING}}
"""


@dataclass
class Params:
    subscribers: int = 1000
    idle_connections: int = 5000
    headline_rate: float = 20.0
    # CLK_TCK is 100 Hz: 20 s at ~5 s of server CPU keeps the tick error well under 1 %;
    # the length is for the VM's window-to-window jitter, averaged over `rounds` windows.
    headline_seconds: float = 20.0
    # Latency (probe) and batched-read windows, per server.
    extra_seconds: float = 10.0
    warmup_seconds: float = 2.0
    step_seconds: float = 3.0
    # Deliveries that arrive this long after the last publication still count as on time.
    grace_seconds: float = 0.25
    ramp_start: float = 20.0
    ramp_factor: float = 1.2
    ramp_max: float = 400.0
    delivered_threshold: float = 0.99
    # Interleaved ~2-s windows per server for the headline figures (see `interleaved`).
    rounds: int = 10
    # SO_RCVLOWAT for the ramp: ~16 frames per read keeps the load generator off the limit.
    batch_bytes: int = 4096
    # Subscribers that read immediately in the latency windows (the rest hold frames).
    latency_probes: int = 100
    connect_concurrency: int = 100
    # Readings ingest: POST window per database backend (see ingest.py).
    ingest_seconds: float = 10.0
    phases: tuple[str, ...] = PHASES
    servers: tuple[str, ...] = SERVERS

    def ramp(self) -> list[float]:
        rates: list[float] = []
        rate = self.ramp_start
        while rate < self.ramp_max:
            rates.append(round(rate))
            rate *= self.ramp_factor
        rates.append(self.ramp_max)
        return sorted(set(rates))


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit: 5,000 sockets per side need it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# servers ------------------------------------------------------------------------------
class ServerUnavailable(Exception):
    """The server under test cannot run here (not built yet, crashed at start...)."""


@dataclass
class Server:
    name: str
    port: int
    ws_path: str
    pub_path: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    core: int | None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


def server_command(
    name: str, port: int, workdir: Path, database_url: str = DEFAULT_DB, extra_config: str = ""
) -> tuple[list[str], str, str]:
    """(argv, subscriber path, publisher path) for one server under test; `database_url`
    and `extra_config` (YAML appended to the config) apply to Sensorcast only."""
    if name == "reference":
        script = BENCH_DIR / "reference_server.py"
        return (
            [sys.executable, str(script), "--host", HOST, "--port", str(port)],
            f"/?channel={CHANNEL}",
            f"/?channel={PUB_CHANNEL}",
        )
    if not (REPO / "server" / "app.py").is_file() or not (REPO / "server" / "cli.py").is_file():
        raise ServerUnavailable(
            "Sensorcast server not built yet (server/app.py or server/cli.py missing)"
        )
    config = workdir / "bench.yaml"
    text = BENCH_CONFIG.format(host=HOST, port=port, database_url=database_url) + extra_config
    config.write_text(text, encoding="utf-8")
    (workdir / "var").mkdir(exist_ok=True)
    return (
        [sys.executable, "-m", "server", "--config", str(config), "serve"],
        f"/api/v1/ws?channel={CHANNEL}",
        f"/api/v1/ws?channel={PUB_CHANNEL}",
    )


def _child_setup(core: int | None) -> Callable[[], None]:
    def setup() -> None:
        # A high fd limit for 5,000 sockets; runs in the child between fork and exec.
        raise_nofile()
        if core is not None and shutil.which("taskset") is None:
            os.sched_setaffinity(0, {core})

    return setup


def spawn(
    argv: list[str], workdir: Path, log_path: Path, core: int | None
) -> subprocess.Popen[bytes]:
    # Plain fork+exec: quick, and nothing else runs on the loop while a server starts.
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            argv,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # This process has no threads yet, so preexec_fn is safe here.
            preexec_fn=_child_setup(core),
            # Own session: a Ctrl-C on the terminal reaches only the bench, which then
            # stops the server in order.
            start_new_session=True,
        )


@contextlib.asynccontextmanager
async def running(
    name: str, core: int | None, database_url: str = DEFAULT_DB, extra_config: str = ""
) -> AsyncIterator[Server]:
    """Start one server under test, wait for GET /health = 200, stop it with SIGTERM."""
    workdir = Path(tempfile.mkdtemp(prefix=f"sensorcast-bench-{name}-"))
    try:
        port = free_port()
        argv, ws_path, pub_path = server_command(name, port, workdir, database_url, extra_config)
        if core is not None and shutil.which("taskset"):
            argv = ["taskset", "-c", str(core), *argv]
        log_path = workdir / "server.log"
        proc = spawn(argv, workdir, log_path, core)
        server = Server(name, port, ws_path, pub_path, proc, log_path, core)
        ready = False
        try:
            await wait_ready(server)  # its error carries the log tail
            ready = True
            yield server
        finally:
            code = stop(server)
            if ready and code not in (0, -signal.SIGTERM):
                print(f"  [{name}] exited with {code}; log tail:\n{server.log_tail()}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def wait_ready(server: Server, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise ServerUnavailable(
                f"{server.name} exited with {server.proc.returncode} during startup:\n"
                f"{server.log_tail()}"
            )
        if await lg.http_status(HOST, server.port, "/health", within=1.0) == 200:
            return
        await asyncio.sleep(0.1)
    raise ServerUnavailable(f"{server.name}: GET /health not 200 after {within:.0f} s")


def stop(server: Server, within: float = 15.0) -> int | None:
    proc = server.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(within)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            print(f"  [{server.name}] did not stop on SIGTERM within {within:.0f} s", flush=True)
    return proc.returncode


# phases -------------------------------------------------------------------------------
async def measure_memory(server: Server, p: Params) -> dict[str, Any]:
    counters = lg.Counters()
    # Warm up first: lazy imports and first-connection caches are not per-connection cost.
    warm = await lg.open_subscribers(HOST, server.port, server.ws_path, CHANNEL, 20, counters)
    await lg.close_all(warm)
    await asyncio.sleep(0.5)
    before = rss_kb(server.pid)
    t0 = time.monotonic()
    subs = await lg.open_subscribers(
        HOST,
        server.port,
        server.ws_path,
        CHANNEL,
        p.idle_connections,
        counters,
        p.connect_concurrency,
    )
    connect_s = time.monotonic() - t0
    await asyncio.sleep(1.0)  # let post-handshake work (registration, presence) settle
    after = rss_kb(server.pid)
    still_open = counters.open
    await lg.close_all(subs)
    return {
        "connections": p.idle_connections,
        "rss_before_kb": before,
        "rss_after_kb": after,
        "kb_per_connection": (after - before) / p.idle_connections,
        "connect_seconds": round(connect_s, 2),
        "connections_per_second": round(p.idle_connections / connect_s, 1),
        "open_at_measure": still_open,
    }


@dataclass
class Step:
    """One publishing window against one server, or several windows merged."""

    rate: float
    sent: int
    seconds: float
    subscribers: int
    expected: int
    on_time: int
    delivered: int
    server_cpu_s: float
    loadgen_cpu_s: float
    wall_s: float
    # Kernel share of the server's CPU: with one write() per delivery on loopback, most of
    # the per-delivery cost is the kernel's TCP path, not Python.
    server_sys_s: float = 0.0
    others: int = 0
    server_busy_s: float = 0.0  # server CPU while publishing (drain excluded)
    loadgen_busy_s: float = 0.0
    core_busy_s: float = 0.0  # the server core's busy time while publishing, anyone's
    server_writes: int = 0
    batched: bool = False
    probes: int = 0  # subscribers that read at once (latency windows); 0 = all
    windows: int = 1
    # us per delivery of each merged window: the spread says how noisy the machine was.
    window_us: list[float] = field(default_factory=list)
    samples_ns: list[int] = field(default_factory=list)

    @property
    def on_time_ratio(self) -> float:
        return self.on_time / self.expected if self.expected else 0.0

    @property
    def server_busy(self) -> float:
        return self.server_busy_s / self.seconds if self.seconds else 0.0

    @property
    def loadgen_busy(self) -> float:
        return self.loadgen_busy_s / self.seconds if self.seconds else 0.0

    @property
    def core_other(self) -> float:
        # Busy time of the server's core not billed to the server: other processes, and
        # softirq work the kernel charges elsewhere. High values mean a noisy figure.
        return (
            max(0.0, self.core_busy_s - self.server_busy_s) / self.seconds if self.seconds else 0.0
        )

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        del out["samples_ns"]
        out.update(
            offered_deliveries_per_s=round(self.expected / self.seconds, 1),
            deliveries_per_s=round(min(self.on_time, self.expected) / self.seconds, 1),
            on_time_ratio=round(self.on_time_ratio, 5),
            delivered_ratio=round(self.delivered / self.expected, 5) if self.expected else 0.0,
            server_cpu_us_per_delivery=(
                round(self.server_cpu_s * 1e6 / self.delivered, 3) if self.delivered else None
            ),
            server_sys_share=(
                round(self.server_sys_s / self.server_cpu_s, 3) if self.server_cpu_s else None
            ),
            server_writes_per_delivery=(
                round(self.server_writes / self.delivered, 3) if self.delivered else None
            ),
            server_busy=round(self.server_busy, 3),
            loadgen_busy=round(self.loadgen_busy, 3),
            core_other=round(self.core_other, 3),
        )
        if self.samples_ns:
            out["latency_ms"] = percentiles_ms(self.samples_ns)
        return out


def merge(steps: list[Step]) -> Step:
    """Interleaved windows of one server as one measurement: sums, so CPU per delivery is
    total CPU over total deliveries and latency percentiles pool every sample."""
    first = steps[0]
    total = Step(first.rate, 0, 0.0, first.subscribers, 0, 0, 0, 0.0, 0.0, 0.0)
    total.batched, total.probes, total.windows = first.batched, first.probes, len(steps)
    for s in steps:
        total.sent += s.sent
        total.seconds += s.seconds
        total.expected += s.expected
        total.on_time += s.on_time
        total.delivered += s.delivered
        total.server_cpu_s += s.server_cpu_s
        total.server_sys_s += s.server_sys_s
        total.loadgen_cpu_s += s.loadgen_cpu_s
        total.wall_s += s.wall_s
        total.others += s.others
        total.server_busy_s += s.server_busy_s
        total.loadgen_busy_s += s.loadgen_busy_s
        total.core_busy_s += s.core_busy_s
        total.server_writes += s.server_writes
        total.samples_ns.extend(s.samples_ns)
        if s.delivered:
            total.window_us.append(round(s.server_cpu_s * 1e6 / s.delivered, 2))
        total.subscribers = min(total.subscribers, s.subscribers)
    return total


@dataclass
class Rig:
    """One server under test with its subscribers and publisher, connected."""

    server: Server
    counters: lg.Counters
    subs: list[lg.Subscriber]
    publisher: lg.Publisher
    connect_seconds: float

    @property
    def name(self) -> str:
        return self.server.name

    @classmethod
    async def open(cls, server: Server, p: Params) -> Rig:
        counters = lg.Counters()
        t0 = time.monotonic()
        subs = await lg.open_subscribers(
            HOST,
            server.port,
            server.ws_path,
            CHANNEL,
            p.subscribers,
            counters,
            p.connect_concurrency,
        )
        connect_s = time.monotonic() - t0
        pub_counters = lg.Counters()
        try:
            publisher = await lg.connect(
                lambda: lg.Publisher(HOST, server.port, server.pub_path, PUB_CHANNEL, pub_counters),
                HOST,
                server.port,
            )
        except BaseException:
            await lg.close_all(subs)
            raise
        assert isinstance(publisher, lg.Publisher)
        return cls(server, counters, subs, publisher, connect_s)

    async def close(self) -> None:
        await lg.close_all([*self.subs, self.publisher])


async def settle(rigs: list[Rig], within: float = 10.0) -> None:
    """Wait until no server under test burns CPU (a previous step's backlog, a GC): the
    servers share a core, so one's leftovers would be billed as the other's slowness."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        before = [cpu_ticks(r.server.pid) for r in rigs]
        await asyncio.sleep(0.2)
        after = [cpu_ticks(r.server.pid) for r in rigs]
        if sum(after) - sum(before) <= 1:
            return


async def run_step(
    rig: Rig,
    rigs: list[Rig],
    rate: float,
    seconds: float,
    p: Params,
    stamping: bool = False,
    batched: bool = False,
    probes: int = 0,
) -> Step:
    """Publish at `rate` for `seconds` to one server and measure it.

    `stamping`: subscribers record latency. `batched`: subscribers read in ~16-frame
    batches (SO_RCVLOWAT), for throughput. `probes` > 0: only that many subscribers, spread
    over the set, read (and stamp) at once; the others leave frames in the kernel until the
    window ends, so the load generator's own per-read cost (about the server's per-send
    cost) does not pile up into the latency of whoever it reads last.
    """
    server, counters, publisher, subs = rig.server, rig.counters, rig.publisher, rig.subs
    await lg.wait_quiet(counters)  # the previous step's backlog must not count here
    await settle(rigs)
    counters.latencies_ns = []
    subscribers = counters.open
    readers = subs[:: max(1, len(subs) // probes)][:probes] if probes else subs
    held: list[lg.Subscriber] = []
    if probes:
        chosen = {id(s) for s in readers}
        held = [s for s in subs if id(s) not in chosen]
        lg.set_rcvlowat(held, HOLD_BYTES)
    for sub in readers:
        sub.stamp = stamping
    if batched:
        lg.set_rcvlowat(subs, p.batch_bytes)
    frames0, others0 = counters.frames, counters.others
    core0 = core_ticks(server.core)
    split0 = cpu_split(server.pid)
    cpu0, me0, t0 = sum(split0), cpu_ticks("self"), time.monotonic()
    writes0 = write_syscalls(server.pid)
    sent, elapsed = await lg.publish_paced(publisher, CHANNEL, rate, seconds)
    core1 = core_ticks(server.core)
    busy_s = (cpu_ticks(server.pid) - cpu0) / CLK_TCK
    me_busy_s = (cpu_ticks("self") - me0) / CLK_TCK
    if batched:
        lg.set_rcvlowat(subs, 1)
    expected = sent * subscribers
    if probes:
        # Probes first; then stop stamping before the held frames are let through.
        await lg.wait_for_count(counters, frames0 + sent * len(readers), max(2.0, seconds))
        for sub in readers:
            sub.stamp = False
        lg.set_rcvlowat(held, 1)
    await lg.wait_for_count(counters, frames0 + expected, p.grace_seconds)
    on_time = counters.frames - frames0
    # Then let a backlog drain, so "late" is told apart from "lost" and the server's CPU
    # for this step's deliveries is all inside the window.
    await lg.wait_for_count(counters, frames0 + expected, max(2.0, seconds))
    await lg.wait_quiet(counters, quiet=0.2, within=2.0)
    split1 = cpu_split(server.pid)
    cpu1, me1, t1 = sum(split1), cpu_ticks("self"), time.monotonic()
    writes = write_syscalls(server.pid) - writes0
    for sub in readers:
        sub.stamp = False
    core_total = core1[1] - core0[1]
    step = Step(
        rate=rate,
        sent=sent,
        seconds=round(elapsed, 4),
        subscribers=subscribers,
        expected=expected,
        on_time=on_time,
        delivered=counters.frames - frames0,
        server_cpu_s=(cpu1 - cpu0) / CLK_TCK,
        server_sys_s=(split1[1] - split0[1]) / CLK_TCK,
        loadgen_cpu_s=(me1 - me0) / CLK_TCK,
        wall_s=round(t1 - t0, 4),
        others=counters.others - others0,
        server_busy_s=busy_s,
        loadgen_busy_s=me_busy_s,
        core_busy_s=(core1[0] - core0[0]) / core_total * elapsed if core_total > 0 else 0.0,
        server_writes=writes,
        batched=batched,
        probes=len(readers) if probes else 0,
        samples_ns=counters.latencies_ns if stamping else [],
    )
    counters.latencies_ns = []
    if publisher.errors:
        raise lg.BenchError(f"{server.name} refused a publication: {publisher.first_error}")
    return step


async def interleaved(
    rigs: list[Rig],
    rate: float,
    seconds: float,
    p: Params,
    stamping: bool = False,
    batched: bool = False,
    probes: int = 0,
) -> dict[str, Step]:
    """`seconds` of load per server in ~2-s windows, alternating servers (ABBA...).

    Speed on a shared VM drifts by tens of percent over minutes (neighbours, frequency,
    host load); measuring the servers one after the other puts that drift into the ratio.
    Alternating short windows exposes both to the same conditions.
    """
    windows: dict[str, list[Step]] = {r.name: [] for r in rigs}
    rounds = max(1, min(p.rounds, round(seconds / 2)))
    for i in range(rounds):
        for rig in rigs if i % 2 == 0 else rigs[::-1]:
            step = await run_step(rig, rigs, rate, seconds / rounds, p, stamping, batched, probes)
            windows[rig.name].append(step)
    return {name: merge(steps) for name, steps in windows.items()}


def percentiles_ms(samples_ns: list[int]) -> dict[str, float]:
    if not samples_ns:
        return {}
    ordered = sorted(samples_ns)
    n = len(ordered)

    def pick(q: float) -> float:
        return round(ordered[min(n - 1, int(q * n))] / 1e6, 3)

    return {
        "p50": pick(0.50),
        "p90": pick(0.90),
        "p99": pick(0.99),
        "max": round(ordered[-1] / 1e6, 3),
        "samples": n,
    }


async def measure_fanout(rigs: list[Rig], p: Params, ramp: bool) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {
        r.name: {"subscribers": p.subscribers, "connect_seconds": round(r.connect_seconds, 2)}
        for r in rigs
    }

    def show(label: str, steps: dict[str, Step]) -> None:
        for name, step in steps.items():
            print(f"  [{name}] {label}: {describe(step)}", flush=True)

    if p.warmup_seconds > 0:
        for rig in rigs:
            await run_step(rig, rigs, p.headline_rate, p.warmup_seconds, p)
    # CPU per delivery with every subscriber reading each frame as it lands (the usual
    # client); the latency recorded here includes the load generator's reading time.
    headline = await interleaved(rigs, p.headline_rate, p.headline_seconds, p, stamping=True)
    show("headline", headline)
    for name, step in headline.items():
        out[name]["headline"] = step.summary()
    if "fanout" in p.phases:
        # The same load with subscribers reading in batches (SO_RCVLOWAT): on loopback the
        # kernel bills part of the receiver's work (its wakeup) to the sending server, more
        # for a server that sends slower than the reader drains; this view has less of it.
        batched = await interleaved(rigs, p.headline_rate, p.extra_seconds, p, batched=True)
        show("batched ", batched)
        for name, step in batched.items():
            out[name]["headline_batched"] = step.summary()
    if "latency" in p.phases and p.latency_probes:
        latency = await interleaved(
            rigs, p.headline_rate, p.extra_seconds, p, stamping=True, probes=p.latency_probes
        )
        show("latency ", latency)
        for name, step in latency.items():
            out[name]["latency"] = step.summary()
    if ramp:
        await ramp_up(rigs, p, out)
    for rig in rigs:
        out[rig.name]["close_codes"] = {str(k): v for k, v in rig.counters.close_codes.items()}
        out[rig.name]["publisher"] = {
            "sent": rig.publisher.seq,
            "responses": rig.publisher.responses,
        }
    return out


async def ramp_up(rigs: list[Rig], p: Params, out: dict[str, dict[str, Any]]) -> None:
    """Raise the rate step by step, both servers at each rate in turn, until each one
    misses the on-time threshold twice in a row at a rate."""
    steps: dict[str, list[dict[str, Any]]] = {r.name: [] for r in rigs}
    best: dict[str, dict[str, Any] | None] = {r.name: None for r in rigs}
    active = list(rigs)
    for rate in p.ramp():
        for rig in list(active):
            if rig.counters.open < p.subscribers:
                active.remove(rig)  # subscribers were dropped: no longer comparable
                continue
            for attempt in range(2):
                step = await run_step(rig, rigs, rate, p.step_seconds, p, batched=True)
                summary = step.summary()
                summary["attempt"] = attempt + 1
                steps[rig.name].append(summary)
                print(f"  [{rig.name}] ramp {rate:>5.0f}/s: {describe(step)}", flush=True)
                # One retry: a burst of unrelated work on the machine can sink a short step;
                # a server at its limit fails both.
                if step.on_time_ratio >= p.delivered_threshold:
                    break
            if step.on_time_ratio < p.delivered_threshold:
                active.remove(rig)
            else:
                best[rig.name] = summary
        if not active:
            break
    for rig in rigs:
        top = best[rig.name]
        out[rig.name]["ramp"] = steps[rig.name]
        out[rig.name]["max_deliveries_per_s"] = top["deliveries_per_s"] if top else None
        out[rig.name]["max_publications_per_s"] = top["rate"] if top else None
        out[rig.name]["ramp_limit"] = ramp_limit(steps[rig.name], top)


def ramp_limit(steps: list[dict[str, Any]], best: dict[str, Any] | None) -> str:
    """Who stopped the ramp: a maxed-out server core, a maxed-out load generator, or the
    top of the ramp. A loadgen-bound figure is a floor for the server, not its ceiling."""
    if not steps or steps[-1] is best:
        return "ramp_max"
    last = steps[-1]
    if last["subscribers"] < steps[0]["subscribers"]:
        return "subscribers_dropped"
    if last["server_busy"] >= 0.9:
        return "server"
    if last["loadgen_busy"] >= 0.9:
        return "loadgen"
    return "unclear"


def describe(step: Step) -> str:
    s = step.summary()
    lat = ""
    if "latency_ms" in s:
        lat = f", p50 {s['latency_ms']['p50']} ms p99 {s['latency_ms']['p99']} ms"
    return (
        f"{s['offered_deliveries_per_s']:>9,.0f} offered/s, on time {s['on_time_ratio']:.2%}, "
        f"server {s['server_busy']:.0%} cpu {s['server_cpu_us_per_delivery']} us/delivery "
        f"({s['server_sys_share'] or 0:.0%} kernel) "
        f"{s['server_writes_per_delivery']} writes/delivery, "
        f"loadgen {s['loadgen_busy']:.0%}, other on core {s['core_other']:.0%}{lat}"
    )


async def measure_memory_of(name: str, p: Params, core: int | None) -> dict[str, Any]:
    async with running(name, core) as server:
        print(f"  [{name}] memory: {p.idle_connections} idle connections", flush=True)
        m = await measure_memory(server, p)
    print(
        f"  [{name}] memory: {m['kb_per_connection']:.2f} KB/connection "
        f"({m['rss_before_kb']} -> {m['rss_after_kb']} KB)",
        flush=True,
    )
    return m


async def measure_ingest(p: Params, core: int | None) -> dict[str, Any]:
    """Readings ingest on SQLite and PostgreSQL, against a raw bulk insert (ingest.py)."""

    def start(database_url: str, extra_config: str) -> Any:
        return running("sensorcast", core, database_url, extra_config)

    return await ingest.measure(start, ingest_params(p), core)


def ingest_params(p: Params) -> ingest.IngestParams:
    return ingest.IngestParams(seconds=p.ingest_seconds)


# report -------------------------------------------------------------------------------
def _get(result: dict[str, Any] | None, *path: str) -> float | None:
    value: Any = result
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return float(value) if isinstance(value, int | float) else None


def comparisons(
    sc: dict[str, Any] | None, ref: dict[str, Any] | None, p: Params
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    load = f"({p.subscribers} subs x {p.headline_rate:g}/s)"

    def row(
        metric: str,
        path: tuple[str, ...],
        target: str,
        check: Callable[[float, float, float], bool] | None,
    ) -> None:
        a, b = _get(sc, *path), _get(ref, *path)
        ratio = a / b if a is not None and b else None
        ok = None
        if check is not None and a is not None and b is not None and ratio is not None:
            ok = check(a, b, ratio)
        rows.append(
            {"metric": metric, "sensorcast": a, "reference": b, "ratio": ratio,
             "target": target, "ok": ok}
        )  # fmt: skip

    row(
        f"server CPU us/delivery {load}",
        ("fanout", "headline", "server_cpu_us_per_delivery"),
        f"<= {TARGET_CPU_RATIO:.2f}x",
        lambda a, b, r: r <= TARGET_CPU_RATIO,
    )
    row(
        "  same, subscribers reading in batches",
        ("fanout", "headline_batched", "server_cpu_us_per_delivery"),
        "(info)",
        None,
    )
    row(
        "max deliveries/s at >= 99% delivered",
        ("fanout", "max_deliveries_per_s"),
        f">= {TARGET_THROUGHPUT_RATIO:.2f}x",
        lambda a, b, r: r >= TARGET_THROUGHPUT_RATIO,
    )
    row(f"latency p50 ms {load}", ("fanout", "latency", "latency_ms", "p50"), "", None)
    row(
        f"latency p99 ms {load}",
        ("fanout", "latency", "latency_ms", "p99"),
        f"<= {TARGET_P99_RATIO:.2f}x",
        lambda a, b, r: r <= TARGET_P99_RATIO,
    )
    row(
        "  p99 ms, every subscriber reading",
        ("fanout", "headline", "latency_ms", "p99"),
        "(info)",
        None,
    )
    row(
        f"memory KB per idle connection ({p.idle_connections})",
        ("memory", "kb_per_connection"),
        f"<= {TARGET_MEMORY_RATIO:.2f}x, < {TARGET_MEMORY_KB:g} KB",
        lambda a, b, r: r <= TARGET_MEMORY_RATIO and a < TARGET_MEMORY_KB,
    )
    if "ingest" in p.phases:
        rows += ingest.comparison_rows((sc or {}).get("ingest"), ingest_params(p))
    if "scaleout" in p.phases:
        rows += scaleout.comparison_rows((sc or {}).get("scaleout"), scaleout.ScaleoutParams())
    if "mqtt" in p.phases:
        rows += mqtt.comparison_rows((sc or {}).get("mqtt"))
    if "latest" in p.phases:
        rows += latest.comparison_rows((sc or {}).get("latest"))
    if "sse" in p.phases:
        rows += sse_bench.comparison_rows((sc or {}).get("sse"))
    if "parse" in p.phases:
        rows += parsing.comparison_rows((sc or {}).get("parse"))
    return rows


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def render_table(rows: list[dict[str, Any]]) -> str:
    header = ("metric", "sensorcast", "reference", "ratio", "target", "ok")
    body = [
        (
            r["metric"],
            _fmt(r["sensorcast"]),
            _fmt(r["reference"]),
            f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-",
            r["target"] or "-",
            {True: "yes", False: "NO", None: "-"}[r["ok"]],
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return " | ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(b) for b in body)])


def environment(p: Params, cores: tuple[int | None, int | None]) -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for dist in ("aiohttp", "websockets", "uvloop", "orjson"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    cpu_model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        commit = done.stdout.strip() or None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "server_core": cores[0],
        "loadgen_core": cores[1],
        "clk_tck": CLK_TCK,
        "versions": versions,
        "commit": commit,
        "params": {**asdict(p), "ramp_rates": p.ramp()},
    }


def write_results(doc: dict[str, Any]) -> Path:
    out_dir = BENCH_DIR / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out_dir / f"bench-{stamp}.json"
    text = json.dumps(doc, indent=2, sort_keys=False) + "\n"
    path.write_text(text, encoding="utf-8")
    (out_dir / "latest.json").write_text(text, encoding="utf-8")
    return path


# entry --------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> tuple[Params, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="sensorcast bench",
        description="Fan-out, latency and memory of Sensorcast vs a websockets reference.",
    )
    parser.add_argument("--quick", action="store_true", help="shorter run (~1.5 min)")
    parser.add_argument("--only", default=",".join(PHASES), help="phases: " + ",".join(PHASES))
    parser.add_argument("--servers", default=",".join(SERVERS), help="sensorcast,reference")
    parser.add_argument("--subscribers", type=int, help="fan-out subscribers (default 1000)")
    parser.add_argument("--idle", type=int, help="idle connections for memory (default 5000)")
    parser.add_argument("--headline-seconds", type=float, help="CPU window per server (20 s)")
    parser.add_argument("--step-seconds", type=float, help="length of each ramp step (3 s)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to CPU cores")
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when a target is missed (for CI gates)"
    )
    args = parser.parse_args(argv)
    p = Params()
    if args.quick:
        p = Params(
            idle_connections=2000,
            headline_seconds=6.0,
            extra_seconds=4.0,
            warmup_seconds=1.0,
            step_seconds=2.0,
            ramp_factor=1.5,
            ingest_seconds=5.0,
        )
    phases = tuple(x.strip() for x in args.only.split(",") if x.strip())
    servers = tuple(x.strip() for x in args.servers.split(",") if x.strip())
    if bad := [x for x in phases if x not in PHASES]:
        parser.error(f"--only: unknown phase {bad[0]!r} (choose from {', '.join(PHASES)})")
    if bad := [x for x in servers if x not in SERVERS]:
        parser.error(f"--servers: unknown server {bad[0]!r} (choose from {', '.join(SERVERS)})")
    p.phases, p.servers = phases, servers
    if args.subscribers is not None:
        p.subscribers = args.subscribers
    if args.idle is not None:
        p.idle_connections = args.idle
    if args.headline_seconds is not None:
        p.headline_seconds = args.headline_seconds
    if args.step_seconds is not None:
        p.step_seconds = args.step_seconds
    if p.subscribers < 1 or p.idle_connections < 1:
        parser.error("--subscribers and --idle must be positive")
    return p, args


def pick_cores(no_pin: bool) -> tuple[int | None, int | None]:
    """(server core, load generator core); None when there is only one core to share."""
    available = sorted(os.sched_getaffinity(0))
    if no_pin or len(available) < 2:
        return None, None
    return available[0], available[1]


async def run(p: Params, cores: tuple[int | None, int | None]) -> dict[str, Any]:
    results: dict[str, Any] = {name: {} for name in p.servers}
    busy = await machine_busy()
    if busy > 0.1:
        print(
            f"warning: the machine is {busy:.0%} busy before the run; other work skews figures",
            flush=True,
        )

    def failed(name: str, exc: BaseException) -> None:
        kind = "skipped" if isinstance(exc, ServerUnavailable) else "failed"
        print(f"  [{name}] {kind}: {type(exc).__name__}: {exc}", flush=True)
        results[name]["error"] = str(exc) if kind == "skipped" else f"{type(exc).__name__}: {exc}"

    # Memory first, on a fresh server each: RSS is per process and barely drifts.
    if "memory" in p.phases:
        for name in p.servers:
            try:
                results[name]["memory"] = await measure_memory_of(name, p, cores[0])
            except (ServerUnavailable, lg.BenchError, OSError, TimeoutError) as exc:
                failed(name, exc)
    sensorcast = results.get("sensorcast")
    if "ingest" in p.phases and sensorcast is not None and "error" not in sensorcast:
        results["sensorcast"]["ingest"] = await measure_ingest(p, cores[0])
    if "scaleout" in p.phases and sensorcast is not None and "error" not in sensorcast:
        try:
            results["sensorcast"]["scaleout"] = await scaleout.measure(
                lambda extra: running("sensorcast", cores[0], extra_config=extra),
                scaleout.ScaleoutParams(),
                cores[0],
            )
        except (ServerUnavailable, lg.BenchError, OSError, TimeoutError) as exc:
            print(f"  [scaleout] failed: {type(exc).__name__}: {exc}", flush=True)
    if "mqtt" in p.phases and sensorcast is not None and "error" not in sensorcast:
        results["sensorcast"]["mqtt"] = await mqtt.measure(running, cores[0])
    if "latest" in p.phases and sensorcast is not None and "error" not in sensorcast:
        results["sensorcast"]["latest"] = await latest.measure(cores[0])
    if "sse" in p.phases and sensorcast is not None and "error" not in sensorcast:
        sensorcast["sse"] = await sse_bench.measure(
            lambda: running("sensorcast", cores[0]), sse_bench.SseParams(subscribers=p.subscribers)
        )
    if "parse" in p.phases and sensorcast is not None:
        results["sensorcast"]["parse"] = parsing.measure()
    if "fanout" not in p.phases and "latency" not in p.phases:
        return results
    # Fan-out and latency: every server up at once (same core, only one loaded at a time)
    # so their windows can be interleaved.
    async with contextlib.AsyncExitStack() as stack:
        rigs: list[Rig] = []
        for name in p.servers:
            if "error" in results[name]:
                continue
            try:
                server = await stack.enter_async_context(running(name, cores[0]))
                print(f"  [{name}] fan-out: connecting {p.subscribers} subscribers", flush=True)
                rig = await Rig.open(server, p)
            except (ServerUnavailable, lg.BenchError, OSError, TimeoutError) as exc:
                failed(name, exc)
                continue
            stack.push_async_callback(rig.close)
            rigs.append(rig)
        if rigs:
            try:
                fanout = await measure_fanout(rigs, p, ramp="fanout" in p.phases)
            except (lg.BenchError, OSError, TimeoutError) as exc:
                for rig in rigs:
                    failed(rig.name, exc)
            else:
                for name, figures in fanout.items():
                    results[name]["fanout"] = figures
    return results


def main(argv: list[str] | None = None) -> int:
    p, args = parse_args(sys.argv[1:] if argv is None else argv)
    cores = pick_cores(args.no_pin)
    if cores[1] is not None:
        os.sched_setaffinity(0, {cores[1]})
    else:
        print("warning: fewer than 2 cores: server and load generator share a CPU", flush=True)
    nofile = raise_nofile()
    need = max(p.idle_connections, p.subscribers) + 100
    if nofile < need:
        print(f"error: RLIMIT_NOFILE {nofile} < {need} needed; raise the hard limit", flush=True)
        return 2
    print(
        f"sensorcast bench: servers on core {cores[0]}, load generator on core {cores[1]}, "
        f"phases {','.join(p.phases)}",
        flush=True,
    )
    started = datetime.now(UTC)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a runtime dependency
        results = asyncio.run(run(p, cores))
    else:
        results = uvloop.run(run(p, cores))
    rows = comparisons(results.get("sensorcast"), results.get("reference"), p)
    doc = {
        "started_at": started.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "environment": environment(p, cores),
        "results": results,
        "comparison": rows,
    }
    path = write_results(doc)
    print()
    print(render_table(rows))
    print(f"\nresults: {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    for name in p.servers:
        limit = results.get(name, {}).get("fanout", {}).get("ramp_limit")
        if limit in ("loadgen", "unclear"):
            print(
                f"note: {name}'s max deliveries/s was limited by {limit}: "
                "a floor, not the server's ceiling"
            )
    errors = [name for name in p.servers if "error" in results.get(name, {})]
    if errors:
        print(f"not measured: {', '.join(errors)} (see messages above)")
        return 1
    if args.strict and any(r["ok"] is False for r in rows):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
