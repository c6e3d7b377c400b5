"""The `scaleout` phase: two Sensorcast instances over Redis against one on the local bus.

Setups, both up at once on the servers' core (only one loaded at a time), measured in
alternating windows like the fan-out phase:

- local: one instance, `bus.backend: local`, with every subscriber.
- redis: two instances, `bus.backend: redis`, on a private redis-server (also on the
  servers' core), the subscribers split between them; publications made on the first, so
  half the deliveries cross instances.

Figures per setup: server CPU us per delivery at `rate`/s (summed over both instances and
Redis for `redis`), publish-to-receive p99, and the best deliveries/s of a short ramp at
>= 99 % delivered (for `redis`, deliveries on the second instance: the cross-instance
ones). Redis commands and round trips (EVALSHA calls) per publication come from
`INFO commandstats`. Ratios are redis / local.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass, field
from typing import Any

import loadgen as lg
import redis
from procstat import CLK_TCK, cpu_ticks, free_port

HOST = "127.0.0.1"
CHANNEL = "bench"
PUB_CHANNEL = "bench-pub"
TARGET_CPU_RATIO = 1.3

# start(extra_config) -> a running Sensorcast (run.py's `running`, pinned like the rest).
Starter = Callable[[str], AbstractAsyncContextManager[Any]]


@dataclass
class ScaleoutParams:
    subscribers: int = 1000
    rate: float = 20.0
    window_seconds: float = 4.0
    rounds: int = 2
    ramp: tuple[float, ...] = (50.0, 100.0, 200.0)
    step_seconds: float = 2.0
    grace_seconds: float = 0.25
    delivered_threshold: float = 0.99
    connect_concurrency: int = 100
    # Publishing sockets: a socket's frames are handled in order, each publish waiting for
    # its Redis round trip, so one socket alone caps the offered rate at 1 / RTT.
    publishers: int = 8
    samples_cap: int = 200_000
    extra: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def private_redis(core: int | None) -> Any:
    binary = shutil.which("redis-server")
    if binary is None:
        raise lg.BenchError("redis-server is not installed")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="sensorcast-bench-redis-")
    argv = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
    argv += ["--dir", workdir]
    if core is not None and shutil.which("taskset"):
        argv = ["taskset", "-c", str(core), *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(host=HOST, port=port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield port, proc.pid, client
    finally:
        proc.kill()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def command_stats(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


@dataclass
class Setup:
    name: str
    pids: list[int]
    counters: list[lg.Counters]  # [all subscribers] (local) or [first, second] (redis)
    subs: list[lg.Subscriber]
    publishers: list[lg.Publisher]
    sent: int = 0

    @property
    def frames(self) -> int:
        return sum(c.frames for c in self.counters)


async def open_setup(name: str, servers: list[Any], pids: list[int], p: ScaleoutParams) -> Setup:
    share = p.subscribers // len(servers)
    counters, subs = [], []
    for server in servers:
        c = lg.Counters()
        subs += await lg.open_subscribers(
            HOST, server.port, server.ws_path, CHANNEL, share, c, p.connect_concurrency
        )
        counters.append(c)
    pub_counters = lg.Counters()
    first = servers[0]
    publishers = []
    for _ in range(p.publishers):
        publisher = await lg.connect(
            lambda: lg.Publisher(HOST, first.port, first.pub_path, PUB_CHANNEL, pub_counters),
            HOST,
            first.port,
        )
        assert isinstance(publisher, lg.Publisher)
        publishers.append(publisher)
    return Setup(name, pids, counters, subs, publishers)


async def publish_paced(s: Setup, rate: float, duration: float) -> tuple[int, float]:
    """lg.publish_paced's absolute schedule, the publications spread over the sockets."""
    total = max(1, round(rate * duration))
    t0 = time.monotonic()
    sent = 0
    while sent < total:
        due = min(total, int((time.monotonic() - t0) * rate) + 1)
        while sent < due:
            s.publishers[sent % len(s.publishers)].publish(CHANNEL)
            sent += 1
        await asyncio.sleep(max(0.0, t0 + sent / rate - time.monotonic()))
    s.sent += sent
    return sent, max(time.monotonic() - t0, sent / rate)


async def until_delivered(s: Setup, target: int, within: float) -> None:
    deadline = time.monotonic() + within
    while s.frames < target:
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(0.01)


async def window(s: Setup, rate: float, seconds: float, p: ScaleoutParams, stamp: bool) -> dict:
    for c in s.counters:
        await lg.wait_quiet(c)
        c.latencies_ns = []
    for sub in s.subs:
        sub.stamp = stamp
    n = len(s.subs)
    cross = s.counters[-1]
    f0, x0 = s.frames, cross.frames
    cpu0 = sum(cpu_ticks(pid) for pid in s.pids)
    sent, elapsed = await publish_paced(s, rate, seconds)
    expected = sent * n
    await until_delivered(s, f0 + expected, p.grace_seconds)
    on_time, cross_on_time = s.frames - f0, cross.frames - x0
    # Then the backlog drains, so late is told apart from lost and the CPU is all in.
    await until_delivered(s, f0 + expected, max(2.0, seconds))
    cpu = (sum(cpu_ticks(pid) for pid in s.pids) - cpu0) / CLK_TCK
    for sub in s.subs:
        sub.stamp = False
    samples = [ns for c in s.counters for ns in c.latencies_ns][: p.samples_cap]
    return {
        "rate": rate,
        "sent": sent,
        "seconds": elapsed,
        "expected": expected,
        "on_time": on_time,
        "delivered": s.frames - f0,
        "cross_on_time": cross_on_time,
        "cpu_s": cpu,
        "samples": samples,
    }


def p99_ms(samples: list[int]) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1e6


async def measure(start: Starter, p: ScaleoutParams, core: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {"params": {k: v for k, v in asdict(p).items() if k != "extra"}}
    with private_redis(core) as (port, redis_pid, client):
        # presence_ttl 300: the presence job (one EVALSHA per pass) stays out of the counts.
        url = f"redis://{HOST}:{port}/0"
        extra = f"bus: {{backend: redis}}\nredis: {{url: '{url}', presence_ttl: 300}}\n"
        async with contextlib.AsyncExitStack() as stack:
            local = await stack.enter_async_context(start(""))
            one = await stack.enter_async_context(start(extra))
            two = await stack.enter_async_context(start(extra))
            print(f"  [scaleout] connecting {p.subscribers} subscribers per setup", flush=True)
            setups = {
                "local": await open_setup("local", [local], [local.pid], p),
                "redis": await open_setup("redis", [one, two], [one.pid, two.pid, redis_pid], p),
            }
            for s in setups.values():
                stack.push_async_callback(lg.close_all, [*s.subs, *s.publishers])
            await asyncio.sleep(1.0)
            windows: dict[str, list[dict]] = {name: [] for name in setups}
            commands0 = command_stats(client)
            redis_pubs = 0
            for _ in range(p.rounds):
                for name, s in setups.items():
                    w = await window(s, p.rate, p.window_seconds, p, stamp=True)
                    windows[name].append(w)
                    if name == "redis":
                        redis_pubs += w["sent"]
            commands1 = command_stats(client)
            ramp: dict[str, list[dict]] = {name: [] for name in setups}
            for rate in p.ramp:
                for name, s in setups.items():
                    w = await window(s, rate, p.step_seconds, p, stamp=False)
                    w.pop("samples")
                    ramp[name].append(w)
            # Every delivery of the run, late ones included, must arrive: none lost.
            for name, s in setups.items():
                await until_delivered(s, s.sent * len(s.subs), 10.0)
                out[name] = {"lost": s.sent * len(s.subs) - s.frames}
    calls = {
        k: commands1.get(k, 0) - commands0.get(k, 0)
        for k in commands1
        if k not in ("info", "ping", "client|setname", "subscribe", "unsubscribe")
    }
    for name, ws in windows.items():
        delivered = sum(w["delivered"] for w in ws)
        expected = sum(w["expected"] for w in ws)
        cpu = sum(w["cpu_s"] for w in ws)
        samples = [ns for w in ws for ns in w.pop("samples")]
        passing = [w for w in ramp[name] if w["on_time"] >= p.delivered_threshold * w["expected"]]
        best = max(passing, key=lambda w: w["on_time"] / w["seconds"], default=None)
        key = "cross_on_time" if name == "redis" else "on_time"
        out[name] |= {
            "cpu_us_per_delivery": cpu / delivered * 1e6 if delivered else None,
            "delivered": delivered,
            "expected": expected,
            "latency_p99_ms": p99_ms(samples),
            "max_deliveries_per_s": best["on_time"] / best["seconds"] if best else None,
            "max_cross_deliveries_per_s": best[key] / best["seconds"] if best else None,
            "ramp": ramp[name],
        }
    out["redis"]["commands_per_publication"] = sum(calls.values()) / redis_pubs
    out["redis"]["round_trips_per_publication"] = calls.get("evalsha", 0) / redis_pubs
    out["redis"]["commands"] = calls
    return out


def comparison_rows(result: dict[str, Any] | None, p: ScaleoutParams) -> list[dict[str, Any]]:
    """Table rows: `sensorcast` = two instances over Redis, `reference` = the local bus."""
    if not isinstance(result, dict) or "redis" not in result:
        return []
    r, loc = result["redis"], result["local"]
    load = f"({p.subscribers} subs x {p.rate:g}/s)"

    def row(metric: str, a: float | None, b: float | None, target: str, ok: Any) -> dict:
        ratio = a / b if a is not None and b else None
        return {
            "metric": metric,
            "sensorcast": a,
            "reference": b,
            "ratio": ratio,
            "target": target,
            "ok": ok(ratio, a) if ratio is not None else None,
        }

    return [
        row(
            f"scaleout CPU us/delivery {load} (ref = local bus)",
            r["cpu_us_per_delivery"],
            loc["cpu_us_per_delivery"],
            f"<= {TARGET_CPU_RATIO:g}x",
            lambda ratio, a: ratio <= TARGET_CPU_RATIO,
        ),
        row(
            "  cross-instance deliveries/s at >= 99%",
            r["max_cross_deliveries_per_s"],
            loc["max_deliveries_per_s"],
            "(info)",
            lambda ratio, a: None,
        ),
        row(
            f"  latency p99 ms {load}",
            r["latency_p99_ms"],
            loc["latency_p99_ms"],
            "(info)",
            lambda ratio, a: None,
        ),
        row(
            "  deliveries lost in the whole run (redis / local)",
            float(r["lost"]),
            float(loc["lost"]),
            "0",
            lambda ratio, a: a == 0,
        ),
        row(
            "  Redis round trips (EVALSHA) per publication",
            r["round_trips_per_publication"],
            1.0,
            "<= 1",
            lambda ratio, a: a <= 1.0,
        ),
        row(
            "  Redis commands per publication (commandstats)",
            r["commands_per_publication"],
            None,
            "(info)",
            lambda ratio, a: None,
        ),
    ]
