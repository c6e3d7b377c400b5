"""Load generator for `sensorcast bench`: thousands of cheap WebSocket clients on one core.

A Python client built on a full WebSocket library spends more CPU per received frame than
the server under test spends sending it, so the bench would measure itself. Here each
subscriber is a bare asyncio Protocol: a hand-written HTTP upgrade, then `data_received`
walks the server's frame headers (unmasked: 2-byte header, 126 -> 16-bit length, 127 ->
64-bit length) and only counts data frames. JSON is decoded only while connecting (to see
`subscribed`) and, in latency mode, the publisher's send stamp is pulled out of the payload
with one regex search instead of a JSON parse.

Frames the clients send (publications, pongs, close) are masked, as RFC 6455 requires of
clients; servers close the connection on an unmasked client frame.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import socket
import time
from collections.abc import Callable
from typing import Any, cast

import orjson

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# The publisher puts "ts" first in `data`; servers keep key order, but search anyway.
_STAMP = re.compile(rb'"ts":(\d+)')
OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 1, 2, 8, 9, 10
MAX_HANDSHAKE = 16 * 1024


class BenchError(Exception):
    """The bench cannot go on (a server refused clients, died, or never became ready)."""


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One FIN frame, masked with a random key (every client frame must be masked)."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    if not n:
        return header + mask
    # XOR the whole payload as one big integer: C speed, no per-byte Python loop.
    key = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return header + mask + masked


def split_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Complete server frames in `data` as (opcode, payload), and the incomplete rest."""
    frames: list[tuple[int, bytes]] = []
    i, n = 0, len(data)
    while n - i >= 2:
        ln = data[i + 1] & 127
        h = 2
        if ln == 126:
            if n - i < 4:
                break
            ln, h = int.from_bytes(data[i + 2 : i + 4], "big"), 4
        elif ln == 127:
            if n - i < 10:
                break
            ln, h = int.from_bytes(data[i + 2 : i + 10], "big"), 10
        end = i + h + ln
        if end > n:
            break
        frames.append((data[i] & 15, data[i + h : end]))
        i = end
    return frames, data[i:]


class Counters:
    """Shared by every subscriber of one run; plain attributes keep the hot path cheap."""

    __slots__ = ("close_codes", "frames", "latencies_ns", "open", "others")

    def __init__(self) -> None:
        self.frames = 0  # data frames received after `subscribed`
        self.others = 0  # data frames without a send stamp while stamping
        self.latencies_ns: list[int] = []
        self.open = 0
        self.close_codes: dict[int, int] = {}


class Client(asyncio.Protocol):
    """Handshake, wait for `subscribed` on `channel`, then hand frames to `on_frames`."""

    def __init__(self, host: str, port: int, path: str, channel: str, counters: Counters) -> None:
        self.request_target = path
        self.host = f"{host}:{port}"
        self.channel = channel
        self.counters = counters
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.upgraded = False
        self.live = False
        self.close_sent = False
        self.close_code: int | None = None
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.key = base64.b64encode(os.urandom(16))

    # asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.counters.open += 1
        self.transport.write(
            b"GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (self.request_target.encode(), self.host.encode(), self.key)
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.counters.open -= 1
        code = self.close_code if self.close_code is not None else 1006
        self.counters.close_codes[code] = self.counters.close_codes.get(code, 0) + 1
        if not self.ready.done():
            self.ready.set_exception(
                BenchError(f"connection closed before `subscribed` (close code {code})")
            )
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if not self.live:
            data = self._setup(data)
            if not data:
                return
        self.on_data(data)

    # setup -----------------------------------------------------------------------------
    def _setup(self, data: bytes) -> bytes:
        """Consume the upgrade response and frames up to `subscribed`; return what follows."""
        if not self.upgraded:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > MAX_HANDSHAKE:
                    self._fail("oversized handshake response")
                self.buf = data
                return b""
            head, data = data[:end], data[end + 4 :]
            status = head.split(b"\r\n", 1)[0]
            if not status.startswith(b"HTTP/1.1 101"):
                self._fail(f"upgrade refused: {status.decode(errors='replace')}")
                return b""
            headers = {}
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            accept = base64.b64encode(hashlib.sha1(self.key + _GUID).digest())
            if headers.get(b"sec-websocket-accept") != accept:
                self._fail("bad Sec-WebSocket-Accept")
                return b""
            self.upgraded = True
        frames, rest = split_frames(data)
        for index, (op, payload) in enumerate(frames):
            if op in (OP_TEXT, OP_BINARY):
                msg = orjson.loads(payload)
                if msg.get("type") == "subscribed" and msg.get("channel") == self.channel:
                    self.live = True
                    self.ready.set_result(None)
                    # Frames after `subscribed` belong to the measured stream.
                    tail = b"".join(_reframe(f) for f in frames[index + 1 :])
                    return tail + rest
                if msg.get("type") == "error":
                    self._fail(f"server error before `subscribed`: {payload[:200]!r}")
                    return b""
            else:
                self.on_control(op, payload)
        self.buf = rest
        return b""

    def _fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(BenchError(why))
        if self.transport is not None:
            self.transport.abort()

    # frames ----------------------------------------------------------------------------
    def on_data(self, data: bytes) -> None:
        frames, self.buf = split_frames(data)
        for op, payload in frames:
            if op in (OP_TEXT, OP_BINARY):
                self.on_message(payload)
            else:
                self.on_control(op, payload)

    def on_message(self, payload: bytes) -> None:
        pass

    def on_control(self, op: int, payload: bytes) -> None:
        if self.transport is None:
            return
        if op == OP_PING:
            self.transport.write(client_frame(OP_PONG, payload))
        elif op == OP_CLOSE:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            if not self.close_sent:
                self.close_sent = True
                self.transport.write(client_frame(OP_CLOSE, payload[:2]))
            self.transport.close()

    def send_text(self, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(OP_TEXT, payload))

    def close(self, code: int = 1000) -> None:
        """Start the closing handshake; the server answers and drops the TCP connection."""
        if self.transport is None or self.transport.is_closing():
            return
        if not self.close_sent:
            self.close_sent = True
            self.transport.write(client_frame(OP_CLOSE, code.to_bytes(2, "big")))


def _reframe(frame: tuple[int, bytes]) -> bytes:
    """Rebuild an unmasked server frame (only for the few frames that share the read with
    `subscribed`), so the hot path sees one uniform byte stream."""
    op, payload = frame
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | op, n))
    elif n < 1 << 16:
        header = bytes((0x80 | op, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | op, 127)) + n.to_bytes(8, "big")
    return header + payload


class Subscriber(Client):
    """Counts data frames; with `stamp` set also records publish-to-receive latency."""

    def __init__(self, host: str, port: int, path: str, channel: str, counters: Counters) -> None:
        super().__init__(host, port, path, channel, counters)
        self.stamp = False  # latency mode: read the send stamp of every frame

    def on_data(self, data: bytes) -> None:
        # Hot path: one call per socket read, usually one ~250-byte frame. Everything is
        # inlined; a frame is only sliced out when it is a control frame.
        c = self.counters
        n = len(data)
        i = 0
        count = 0
        stamping = self.stamp
        now = time.monotonic_ns() if stamping else 0
        while n - i >= 2:
            ln = data[i + 1] & 127  # server frames are never masked
            if ln < 126:
                h = 2
            elif ln == 126:
                if n - i < 4:
                    break
                ln = (data[i + 2] << 8) | data[i + 3]
                h = 4
            else:
                if n - i < 10:
                    break
                ln = int.from_bytes(data[i + 2 : i + 10], "big")
                h = 10
            end = i + h + ln
            if end > n:
                break
            op = data[i] & 15
            if 0 < op < 3:  # text or binary; no global lookups on the hot path
                if stamping:
                    m = _STAMP.search(data, i + h, end)
                    if m is None:
                        c.others += 1
                    else:
                        count += 1
                        c.latencies_ns.append(now - int(m.group(1)))
                else:
                    count += 1
            else:
                self.on_control(op, data[i + h : end])
            i = end
        if i < n:
            self.buf = data[i:]
        c.frames += count


class Publisher(Client):
    """Sends stamped publications; reads every reply so its socket never backs up."""

    def __init__(self, host: str, port: int, path: str, channel: str, counters: Counters) -> None:
        super().__init__(host, port, path, channel, counters)
        self.seq = 0
        self.responses = 0
        self.errors = 0
        self.first_error: Any = None
        self.pad = "x" * 60

    def publish(self, target: str) -> None:
        self.seq += 1
        # ~150 bytes of data; the stamp is taken right before the write so the latency
        # covers the server's whole path and the write to the socket.
        frame = orjson.dumps(
            {
                "type": "publish",
                "id": self.seq,
                "channel": target,
                "data": {
                    "ts": time.monotonic_ns(),
                    "seq": self.seq,
                    "sensor_id": "bench-sensor-0001",
                    "values": {"temperature": 21.5, "humidity": 40.25},
                    "pad": self.pad,
                },
            }
        )
        self.send_text(frame)

    def on_message(self, payload: bytes) -> None:
        msg = orjson.loads(payload)
        kind = msg.get("type")
        if kind == "response":
            self.responses += 1
        elif kind == "error":
            self.errors += 1
            if self.first_error is None:
                self.first_error = msg


async def connect(
    factory: Callable[[], Client], host: str, port: int, within: float = 15.0
) -> Client:
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(loop.create_connection(factory, host, port), within)
    assert isinstance(proto, Client)
    try:
        await asyncio.wait_for(proto.ready, within)
    except BaseException:
        if proto.transport is not None:
            proto.transport.abort()
        raise
    return proto


async def open_subscribers(
    host: str,
    port: int,
    path: str,
    channel: str,
    count: int,
    counters: Counters,
    concurrency: int = 100,
) -> list[Subscriber]:
    """Connect `count` subscribers, at most `concurrency` handshakes in flight (the listen
    backlog is finite), and wait until each has its `subscribed` frame."""
    sem = asyncio.Semaphore(concurrency)

    async def one() -> Subscriber:
        async with sem:
            proto = await connect(
                lambda: Subscriber(host, port, path, channel, counters), host, port
            )
        assert isinstance(proto, Subscriber)
        return proto

    results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    subs = [r for r in results if isinstance(r, Subscriber)]
    failures = [r for r in results if not isinstance(r, Subscriber)]
    if failures:
        await close_all(subs)
        first = failures[0]
        raise BenchError(
            f"{len(failures)} of {count} subscribers failed to connect: "
            f"{type(first).__name__}: {first}"
        )
    return subs


async def close_all(clients: list[Subscriber] | list[Client], within: float = 10.0) -> None:
    """Close handshake for everyone, then abort whoever has not gone `within` s."""
    for client in clients:
        client.close()
    pending = [c.closed for c in clients if not c.closed.done()]
    if pending:
        await asyncio.wait(pending, timeout=within)
    for client in clients:
        if not client.closed.done() and client.transport is not None:
            client.transport.abort()
    await asyncio.sleep(0)


def set_rcvlowat(clients: list[Subscriber], low: int) -> None:
    """Wake a subscriber only once `low` bytes wait in its socket (SO_RCVLOWAT).

    A read per ~250-byte frame costs the load generator ~10-15 us (wakeup, syscall, ACK,
    callback), so on one core it saturates near 70k deliveries/s, below the servers under
    test. Batching ~16 frames per read brings that to ~1.5 us per frame. Used only for the
    throughput ramp: latency is measured with the default (1) so every frame is read as
    soon as it lands. Setting it back to 1 signals readability at once if data waits.
    """
    for client in clients:
        if client.transport is None or client.transport.is_closing():
            continue
        sock = client.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, low)


async def publish_paced(
    publisher: Publisher, channel: str, rate: float, duration: float
) -> tuple[int, float]:
    """Publish at `rate`/s for `duration` s on an absolute schedule (late sends catch up,
    so a slow loop iteration does not lower the offered rate). Returns (sent, elapsed)."""
    total = max(1, round(rate * duration))
    interval = 1.0 / rate
    t0 = time.monotonic()
    sent = 0
    while sent < total:
        due = min(total, int((time.monotonic() - t0) * rate) + 1)
        while sent < due:
            publisher.publish(channel)
            sent += 1
        delay = t0 + sent * interval - time.monotonic()
        # sleep(0) when late still yields, so subscribers' reads run between bursts.
        await asyncio.sleep(max(0.0, delay))
    return sent, max(time.monotonic() - t0, sent * interval)


async def wait_for_count(counters: Counters, target: int, within: float) -> bool:
    """Wait until `counters.frames` reaches `target` (True) or `within` s pass (False)."""
    deadline = time.monotonic() + within
    while counters.frames < target:
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def wait_quiet(counters: Counters, quiet: float = 0.3, within: float = 5.0) -> None:
    """Wait until no frame has arrived for `quiet` s: the previous step's backlog is gone."""
    deadline = time.monotonic() + within
    last = counters.frames
    still_since = time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        if counters.frames != last:
            last = counters.frames
            still_since = time.monotonic()
        elif time.monotonic() - still_since >= quiet:
            return


async def http_status(host: str, port: int, path: str, within: float = 2.0) -> int:
    """Status code of a GET, or 0 when the server does not answer."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), within)
    except (OSError, TimeoutError):
        return 0
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        line = await asyncio.wait_for(reader.readline(), within)
        parts = line.split()
        return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0
    except (OSError, TimeoutError):
        return 0
    finally:
        writer.close()
