"""server.client against a real server on a real port: reconnect, recovery, requests, auth."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from server.client import (
    AuthError,
    Backoff,
    Client,
    ConnectError,
    RequestError,
    RequestTimeout,
    Subscription,
    connect,
)
from tests.client.conftest import LiveServer, free_port
from tests.conftest import eventually

CHANNEL = "alerts"
# The server's other dependencies: none may be loaded by `import server.client`.
SERVER_ONLY = ("marshmallow", "yaml", "jwt", "asyncpg", "aiosqlite", "redis", "aiojobs", "apispec")


class Gate:
    """An injected sleep: records each backoff delay and returns only when let through,
    so a test decides when the client reconnects (and no test waits for a real delay)."""

    def __init__(self, hook: Callable[[int], Awaitable[None]] | None = None) -> None:
        self.delays: list[float] = []
        self.open = asyncio.Event()
        self.open.set()
        self.hook = hook

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if self.hook is not None:
            await self.hook(len(self.delays))
        await self.open.wait()


async def publish_rest(live: LiveServer, n: int, channel: str = CHANNEL) -> list[int]:
    """Publish `n` events over REST; returns their offsets."""
    headers = {"Authorization": f"Bearer {live.token()}"}
    offsets = []
    async with aiohttp.ClientSession() as http:
        for i in range(n):
            url = f"{live.url}/api/v1/events/{channel}"
            async with http.post(url, json={"n": i}, headers=headers) as resp:
                assert resp.status == 202, await resp.text()
                offsets.append((await resp.json())["offset"])
    return offsets


async def take(sub: Subscription, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    async with asyncio.timeout(timeout):
        return [await anext(sub) for _ in range(n)]


def drop_sockets(live: LiveServer) -> None:
    for conn in live.sockets():
        conn.close_soon(1011, "dropped by the test")


def test_import_loads_no_server_only_module() -> None:
    code = "import sys, server.client\nprint('\\n'.join(sorted(m for m in sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    ours = [m for m in out if m == "server" or m.startswith("server.")]
    assert all(m == "server" or m.startswith("server.client") for m in ours), ours
    assert "server.client" in ours
    assert not [m for m in out if m.split(".")[0] in SERVER_ONLY]


def test_backoff_is_full_jitter_doubling_to_the_cap() -> None:
    top = Backoff(random=lambda: 1.0)
    assert [top.delay(n) for n in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert top.delay(10_000) == 30.0
    assert Backoff(random=lambda: 0.0).delay(5) == 0.0
    half = Backoff(base=1.0, cap=5.0, random=lambda: 0.5)
    assert [half.delay(n) for n in range(4)] == [0.5, 1.0, 2.0, 2.5]


async def test_subscribe_request_and_clean_close(live: LiveServer) -> None:
    client = connect(live.url, live.token())
    async with client:
        sub = client.subscribe(CHANNEL)
        await sub.ready()
        offsets = await publish_rest(live, 2)
        frames = await take(sub, 2)
        assert [f["offset"] for f in frames] == offsets
        assert [f["data"] for f in frames] == [{"n": 0}, {"n": 1}]
        assert frames[0]["type"] == "event"
        assert frames[0]["channel"] == CHANNEL
        stats = await client.request("stats", "channel", {"channel": CHANNEL})
        assert stats["offset"] == offsets[-1]
        with pytest.raises(RequestError) as err:
            await client.request("sensors", "get", {"id": 999999})
        assert err.value.code == "not_found"
        published = await client.request(
            "events", "create", {"channel": CHANNEL, "event": {"n": 2}}
        )
        assert (await take(sub, 1))[0]["offset"] == published["offset"]
    # Closing ends the iterator and leaves no socket on the server.
    with pytest.raises(StopAsyncIteration):
        await anext(sub)
    await eventually(lambda: not live.sockets())


async def test_refused_subscribe_is_an_error_and_the_client_stays(live: LiveServer) -> None:
    async with connect(live.url) as client:
        sub = client.subscribe("user:someone")
        with pytest.raises(RequestError) as err:
            await sub.ready()
        assert err.value.code == "forbidden"
        assert (await client.send({"type": "ping"}))["type"] == "pong"


async def test_reconnect_after_the_server_drops_the_socket_recovers(live: LiveServer) -> None:
    gate = Gate()
    status: list[tuple[str, Any]] = []
    client = Client(
        live.url, live.token(), sleep=gate, on_status=lambda e, d: status.append((e, d))
    )
    async with client:
        sub = client.subscribe(CHANNEL)
        await sub.ready()
        first = await publish_rest(live, 1)
        assert [f["offset"] for f in await take(sub, 1)] == first
        gate.open.clear()
        drop_sockets(live)
        await eventually(lambda: len(gate.delays) == 1)
        missed = await publish_rest(live, 3)
        gate.open.set()
        await client.wait_connected()
        later = await publish_rest(live, 1)
        frames = await take(sub, 4)
        # Every offset once, in order: the three missed ones recovered, then the live one.
        assert [f["offset"] for f in frames] == missed + later
        assert all(f["type"] == "event" for f in frames)
        assert client.reconnects == 1
        assert sub.gaps == 0
        assert [e for e, _ in status] == ["connected", "disconnected", "reconnecting", "connected"]
        assert [d.get("reconnects") for e, d in status if e == "connected"] == [0, 1]
        assert status[1][1]["code"] == 1011
        # No duplicate follows: a round trip through the socket is the fence.
        await client.send({"type": "ping"})
        assert sub._queue.empty()


async def test_reconnect_while_down_then_recovered_false_after_restart(
    live: LiveServer,
) -> None:
    async def restart_at_third_attempt(attempt: int) -> None:
        if attempt == 3:
            await live.start()

    gate = Gate(restart_at_third_attempt)
    client = Client(live.url, live.token(), sleep=gate, backoff=Backoff(random=lambda: 1.0))
    async with client:
        sub = client.subscribe(CHANNEL)
        await sub.ready()
        await publish_rest(live, 2)
        await take(sub, 2)
        old_epoch = sub.position.epoch if sub.position else None
        await live.stop()
        # Attempts 1 and 2 find nothing listening; the third delay restarts the server.
        gap = (await take(sub, 1, timeout=20))[0]
        assert gap["type"] == "subscribed"
        assert gap["recovered"] is False
        assert gap["channel"] == CHANNEL
        assert gap["epoch"] != old_epoch
        assert sub.gaps == 1
        assert client.reconnects == 1
        # Bounded backoff: full jitter with random() = 1 is the ceiling itself.
        assert gate.delays == [0.5, 1.0, 2.0]
        fresh = await publish_rest(live, 1)
        frame = (await take(sub, 1))[0]
        assert frame["offset"] == fresh[0]
        assert frame["epoch"] == gap["epoch"]


async def test_request_times_out_while_offline_and_is_not_sent_later(live: LiveServer) -> None:
    gate = Gate()
    async with Client(live.url, live.token(), sleep=gate) as client:
        gate.open.clear()
        drop_sockets(live)
        await eventually(lambda: len(gate.delays) == 1)
        with pytest.raises(RequestTimeout) as err:
            await client.request("events", "create", {"channel": CHANNEL, "event": {}}, 1.0)
        assert err.value.code == "timeout"
        gate.open.set()
        await client.wait_connected()
        stats = await client.request("stats", "channel", {"channel": CHANNEL})
        assert stats["offset"] == 0


async def test_auth_error_at_connect_and_no_reconnect(live: LiveServer) -> None:
    gate = Gate()
    with pytest.raises(AuthError) as err:
        async with Client(live.url, "not-a-token", sleep=gate):
            pass
    assert err.value.code == 4001
    with pytest.raises(AuthError):
        async with Client(f"{live.url}/api/v1/ws/secure", sleep=gate):
            pass
    assert gate.delays == []


async def test_a_4001_close_later_is_an_auth_error_without_reconnect(live: LiveServer) -> None:
    """What a token's expiry does (SPEC §4): the socket is closed with 4001."""
    gate = Gate()
    async with Client(live.url, live.token(), sleep=gate) as client:
        sub = client.subscribe(CHANNEL)
        await sub.ready()
        for conn in live.sockets():
            conn.close_soon(4001, "token expired")
        with pytest.raises(AuthError) as err:
            await take(sub, 1)
        assert (err.value.code, err.value.reason) == (4001, "token expired")
        with pytest.raises(AuthError):
            await client.request("stats", "get")
    assert gate.delays == []


async def test_an_expired_token_is_an_auth_error_and_refresh_renews(live: LiveServer) -> None:
    gate = Gate()
    async with Client(live.url, live.token(ttl=2), sleep=gate) as client:
        sub = client.subscribe(CHANNEL)
        await sub.ready()
        with pytest.raises(AuthError) as err:
            await take(sub, 1, timeout=30)
        assert (err.value.code, err.value.reason) == (4001, "token expired")
    assert gate.delays == []
    async with Client(live.url, live.token(ttl=60)) as client:
        fresh = live.token(ttl=3600)
        answer = await client.refresh(fresh)
        assert "exp" in answer
        assert client.token == fresh
        with pytest.raises(RequestError) as refused:
            await client.refresh(live.token(sub="someone-else"))
        assert refused.value.code == "forbidden"
        assert client.token == fresh


async def test_first_connect_failure_is_a_connect_error() -> None:
    with pytest.raises(ConnectError):
        async with connect(f"http://127.0.0.1:{free_port()}"):
            pass


async def test_a_silent_server_is_detected_by_its_missing_heartbeat() -> None:
    """A peer that stops sending anything (not even pings) is dropped and reconnected."""
    accepted: list[web.WebSocketResponse] = []

    async def silent(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=None, autoping=False)
        await ws.prepare(request)
        accepted.append(ws)
        await ws.send_json({"type": "connection", "subscriptions": [], "heartbeat_interval": 1})
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/api/v1/ws", silent)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        gate = Gate()
        async with Client(f"http://127.0.0.1:{port}", sleep=gate):
            await eventually(lambda: len(accepted) >= 2, timeout=20)
        assert len(gate.delays) >= 1
    finally:
        await runner.cleanup()


async def test_a_publication_on_two_subscribed_channels_reaches_each_iterator_once(
    live: LiveServer,
) -> None:
    async with connect(live.url, live.token()) as client:
        sensor = await client.request("sensors", "create", {"type": "temperature"})
        every, one = client.subscribe("readings"), client.subscribe(f"readings:{sensor['id']}")
        await every.ready()
        await one.ready()
        reading = {"sensor_id": sensor["id"], "values": {"t": 1.5}}
        assert await client.request("readings", "create", {"body": reading}) == {"accepted": 1}
        (a,), (b,) = await take(every, 1), await take(one, 1)
        assert a is b  # one frame on the wire, routed to both
        assert a["data"]["values"] == {"t": 1.5}
        assert set(a["offsets"]) >= {"readings", f"readings:{sensor['id']}"}
        assert every.position is not None
        assert every.position.offset == a["offsets"]["readings"]
        await client.send({"type": "ping"})
        assert every._queue.empty()
        assert one._queue.empty()


def test_tail_reports_reconnects_and_gaps_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    from server.client_cli import _status

    _status("disconnected", {"code": 1001, "reason": "server shutting down"})
    _status("reconnecting", {"attempt": 2, "delay": 0.73})
    _status("connected", {"reconnects": 1})
    _status("gap", {"channel": "readings"})
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "sensorcast: disconnected (1001 server shutting down)",
        "sensorcast: reconnecting in 0.7 s (attempt 2)",
        "sensorcast: reconnected",
        "sensorcast: readings: events were missed and could not be recovered",
    ]
