"""The `sse` phase: SSE fan-out against the WebSocket path, and conflation (`max_rate`).

One Sensorcast (pinned like the other phases), everything in the same run:

1. fan-out: `subscribers` WebSocket subscribers on `bench:ws` and as many SSE streams on
   `bench:sse`; windows alternate between the two (a shared VM drifts over minutes),
   `rate` publications/s each. Server CPU us per delivery (utime+stime from /proc) of the SSE
   windows as a ratio to the WebSocket windows. Target <= 1.1x.
2. conflation: `subscribers` WebSocket subscribers with `subscribe {max_rate: 1}` on
   `bench:conf`, while `sensors` sensors publish `updates` entity events/s each (1,000/s).
   Against: the same number of subscribers without max_rate on `bench:full`. Delivering
   every update would be 1,000,000 deliveries/s, past what one core can do, so that window
   runs at a tenth of the rate and its CPU is scaled by 10 (linear in the publications: the
   per-delivery path does not change with the rate). Target <= 0.15x.

The SSE subscribers are bare asyncio Protocols that count `event:` lines, as the WebSocket
load generator counts frames, so the load generator does not measure itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass
from typing import Any, cast

import loadgen as lg
import orjson
from procstat import CLK_TCK, cpu_ticks

HOST = "127.0.0.1"
TARGET_SSE_RATIO = 1.1
TARGET_CONFLATION_RATIO = 0.15
_EVENT = b"\nevent: "

# start() -> a running server (run.py's `running`).
Starter = Callable[[], AbstractAsyncContextManager[Any]]


@dataclass
class SseParams:
    subscribers: int = 1000
    rate: float = 20.0
    window_seconds: float = 2.0
    rounds: int = 4
    sensors: int = 10
    updates: float = 100.0  # per sensor per second
    conflation_seconds: float = 4.0
    baseline_scale: int = 10
    connect_concurrency: int = 100


class SseSubscriber(asyncio.Protocol):
    """GET /api/v1/sse, then count events (`event:` lines) after its `subscribed`."""

    def __init__(self, path: str, counters: lg.Counters) -> None:
        self.path = path
        self.counters = counters
        self.tail = b""
        self.live = False
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(b"GET %s HTTP/1.1\r\nHost: bench\r\n\r\n" % self.path.encode())

    def data_received(self, data: bytes) -> None:
        if not self.live:
            buf = self.tail + data
            at = buf.find(b"event: subscribed")
            if at < 0:
                self.tail = buf[-64:]
                if buf.startswith(b"HTTP/1.1") and not buf.startswith(b"HTTP/1.1 200"):
                    self.ready.set_exception(lg.BenchError(buf[:80].decode(errors="replace")))
                return
            self.live = True
            self.ready.set_result(None)
            data = buf[at + 17 :]
            self.tail = b""
        # An `event:` line split over two reads is found in the carried 7 bytes + data.
        buf = self.tail + data
        self.counters.frames += buf.count(_EVENT)
        self.tail = buf[-7:]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(lg.BenchError("SSE stream closed before `subscribed`"))


async def open_sse(
    port: int, path: str, count: int, counters: lg.Counters, concurrency: int
) -> list[SseSubscriber]:
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(concurrency)

    async def one() -> SseSubscriber:
        async with sem:
            _, proto = await loop.create_connection(
                lambda: SseSubscriber(path, counters), HOST, port
            )
            await asyncio.wait_for(proto.ready, 15)
            return proto

    return list(await asyncio.gather(*(one() for _ in range(count))))


class EntityPublisher(lg.Publisher):
    """Publishes `entity_event` readings of a sensor (what conflation is keyed by)."""

    def publish_entity(self, target: str, sensor: int) -> None:
        self.seq += 1
        data = {
            "type": "entity_event",
            "entity_type": "sensor",
            "event_type": "reading",
            "entity_id": sensor,
            "data": {"sensor_id": sensor, "values": {"t": self.seq}, "pad": self.pad},
        }
        self.send_text(
            orjson.dumps({"type": "publish", "id": self.seq, "channel": target, "data": data})
        )


@contextlib.asynccontextmanager
async def _clients(server: Any, p: SseParams) -> AsyncIterator[dict[str, Any]]:
    port = server.port
    opened: list[Any] = []
    try:
        c: dict[str, Any] = {name: lg.Counters() for name in ("ws", "sse", "conf", "full")}
        pub = await lg.connect(
            lambda: EntityPublisher(
                HOST, port, "/api/v1/ws?channel=bench-pub", "bench-pub", c["ws"]
            ),
            HOST,
            port,
        )
        opened.append(pub)
        for name in ("ws", "conf", "full"):
            subs = await lg.open_subscribers(
                HOST,
                port,
                f"/api/v1/ws?channel=bench:{name}",
                f"bench:{name}",
                p.subscribers,
                c[name],
                p.connect_concurrency,
            )
            opened += subs
            if name == "conf":
                # Swap each to a conflated subscription on the same channel.
                for sub in subs:
                    sub.send_text(b'{"type":"unsubscribe","channel":"bench:conf"}')
                    sub.send_text(b'{"type":"subscribe","channel":"bench:conf","max_rate":1}')
        streams = await open_sse(
            port, "/api/v1/sse?channel=bench:sse", p.subscribers, c["sse"], p.connect_concurrency
        )
        opened += streams
        await asyncio.sleep(1.0)  # the swaps' replies
        yield {"pub": pub, "counters": c}
    finally:
        for client in opened:
            if client.transport is not None:
                client.transport.abort()
        await asyncio.sleep(0)


async def _window(
    server: Any, counters: lg.Counters, publish: Callable[[], None], rate: float, seconds: float
) -> dict[str, float]:
    await lg.wait_quiet(counters, quiet=0.2)
    before, ticks = counters.frames, cpu_ticks(server.pid)
    total = round(rate * seconds)
    t0 = time.monotonic()
    sent = 0
    while sent < total:
        due = min(total, int((time.monotonic() - t0) * rate) + 1)
        while sent < due:
            publish()
            sent += 1
        await asyncio.sleep(max(0.0, t0 + sent / rate - time.monotonic()))
    await lg.wait_quiet(counters, quiet=0.3, within=10)
    cpu_s = (cpu_ticks(server.pid) - ticks) / CLK_TCK
    return {"deliveries": counters.frames - before, "cpu_s": cpu_s, "published": sent}


def _per_delivery(windows: list[dict[str, float]]) -> float:
    deliveries = sum(w["deliveries"] for w in windows)
    return sum(w["cpu_s"] for w in windows) * 1e6 / deliveries if deliveries else float("nan")


async def measure(start: Starter, p: SseParams) -> dict[str, Any]:
    out: dict[str, Any] = {"params": asdict(p)}
    async with start() as server, _clients(server, p) as rig:
        pub, c = rig["pub"], rig["counters"]
        print(
            f"  [sse] {p.subscribers} WS + {p.subscribers} SSE subscribers, {p.rate:g} pub/s, "
            f"{p.rounds} x {p.window_seconds:g}-s windows each (server pid {server.pid})",
            flush=True,
        )
        runs: dict[str, list[dict[str, float]]] = {"ws": [], "sse": []}
        for _ in range(p.rounds):
            for name in ("ws", "sse"):
                runs[name].append(
                    await _window(
                        server,
                        c[name],
                        lambda n=name: pub.publish(f"bench:{n}"),
                        p.rate,
                        p.window_seconds,
                    )
                )
        ws_us, sse_us = _per_delivery(runs["ws"]), _per_delivery(runs["sse"])
        expected = p.rate * p.window_seconds * p.rounds * p.subscribers
        out["fanout"] = {
            "ws_us_per_delivery": round(ws_us, 2),
            "sse_us_per_delivery": round(sse_us, 2),
            "ratio": round(sse_us / ws_us, 3),
            "delivered_ws": sum(w["deliveries"] for w in runs["ws"]) / expected,
            "delivered_sse": sum(w["deliveries"] for w in runs["sse"]) / expected,
            "ok": sse_us / ws_us <= TARGET_SSE_RATIO,
        }
        f = out["fanout"]
        print(
            f"  [sse] fan-out: SSE {f['sse_us_per_delivery']} us/delivery vs WebSocket "
            f"{f['ws_us_per_delivery']} -> {f['ratio']}x (target <= {TARGET_SSE_RATIO}x); "
            f"delivered {f['delivered_sse']:.1%} / {f['delivered_ws']:.1%}",
            flush=True,
        )

        rate = p.sensors * p.updates
        sensor = iter(range(1 << 62))

        def conflated() -> None:
            pub.publish_entity("bench:conf", next(sensor) % p.sensors)

        def full() -> None:
            pub.publish_entity("bench:full", next(sensor) % p.sensors)

        conf = await _window(server, c["conf"], conflated, rate, p.conflation_seconds)
        base = await _window(server, c["full"], full, rate / p.baseline_scale, p.conflation_seconds)
        every = base["cpu_s"] * p.baseline_scale
        ratio = conf["cpu_s"] / every if every else float("nan")
        out["conflation"] = {
            "conflated_cpu_s": conf["cpu_s"],
            "conflated_deliveries": conf["deliveries"],
            "every_update_cpu_s_scaled": round(every, 3),
            "baseline_deliveries": base["deliveries"],
            "ratio": round(ratio, 4),
            "ok": ratio <= TARGET_CONFLATION_RATIO,
        }
        k = out["conflation"]
        print(
            f"  [sse] conflation: {p.subscribers} subscribers max_rate 1, {p.sensors} sensors x "
            f"{p.updates:g}/s for {p.conflation_seconds:g} s: server CPU {conf['cpu_s']:.2f} s, "
            f"{conf['deliveries']:,} deliveries; every update (measured at 1/"
            f"{p.baseline_scale} of the rate, {base['deliveries']:,} deliveries, scaled): "
            f"{every:.2f} s -> {k['ratio']}x (target <= {TARGET_CONFLATION_RATIO}x)",
            flush=True,
        )
    return out


def comparison_rows(result: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not isinstance(result, dict) or "fanout" not in result:
        return []
    f, k = result["fanout"], result.get("conflation", {})
    rows = [
        {
            "metric": "SSE server CPU per delivery (ref = WebSocket path)",
            "sensorcast": f["sse_us_per_delivery"],
            "reference": f["ws_us_per_delivery"],
            "ratio": f["ratio"],
            "target": f"<= {TARGET_SSE_RATIO}x",
            "ok": f["ok"],
        }
    ]
    if k:
        rows.append(
            {
                "metric": "conflation max_rate 1 CPU s (ref = every update)",
                "sensorcast": k["conflated_cpu_s"],
                "reference": k["every_update_cpu_s_scaled"],
                "ratio": k["ratio"],
                "target": f"<= {TARGET_CONFLATION_RATIO}x",
                "ok": k["ok"],
            }
        )
    return rows
