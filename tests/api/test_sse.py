"""GET /api/v1/sse read line by line with a plain aiohttp client (no SSE library)."""

from __future__ import annotations

import asyncio
import signal
import socket
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from server import codec
from server.keys import AUTH, BUS, HUB
from server.ws.endpoint import close_all
from tests.conftest import auth_header, eventually, open_ws

READ_TIMEOUT = 5.0


class Stream:
    """An SSE response: `next()` is the next block (fields, or a comment), parsed by hand."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp

    async def next(self, timeout: float = READ_TIMEOUT) -> dict[str, Any]:
        block: dict[str, Any] = {}
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.resp.content.readline()
                if not raw:
                    raise EOFError("stream ended")
                line = raw.decode().rstrip("\n")
                if line == "":
                    if block:
                        return block
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "":
                    block["comment"] = value
                else:
                    assert name not in block, f"field {name} twice in one event"
                    block[name] = value

    async def event(self, timeout: float = READ_TIMEOUT) -> dict[str, Any]:
        """The next event that is not a keep-alive comment, with its data decoded."""
        while True:
            block = await self.next(timeout)
            if "comment" in block and "data" not in block:
                continue
            block["json"] = codec.loads(block["data"])
            return block

    async def opened(self, channels: int) -> list[dict[str, Any]]:
        """Read `retry` then one `subscribed` per channel; returns those."""
        assert await self.next() == {"retry": "3000"}
        subscribed = [await self.event() for _ in range(channels)]
        assert [s["event"] for s in subscribed] == ["subscribed"] * channels
        return subscribed

    async def ended(self, timeout: float = READ_TIMEOUT) -> None:
        """Read until the server ends the stream cleanly."""
        async with asyncio.timeout(timeout):
            while await self.resp.content.readline():
                pass
        assert self.resp.content.at_eof()


async def open_sse(
    client: TestClient, query: str = "channel=general", channels: int | None = None, **kw: Any
) -> tuple[Stream, list[dict[str, Any]]]:
    resp = await client.get(f"/api/v1/sse?{query}", **kw)
    assert resp.status == 200, await resp.text()
    stream = Stream(resp)
    n = channels if channels is not None else len(query.split("channel=")) - 1 or 1
    return stream, await stream.opened(n)


async def publish(client: TestClient, channels: list[str], i: int) -> Any:
    return await client.app[BUS].publish(channels, "event", {"data": {"i": i}})


async def test_headers_and_opening(client):
    resp = await client.get("/api/v1/sse?channel=readings,general")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert resp.headers["Cache-Control"] == "no-cache"
    stream = Stream(resp)
    subscribed = await stream.opened(2)
    first, second = (s["json"] for s in subscribed)
    assert first["channel"] == "readings"
    assert second["channel"] == "general"
    # Each channel has its own epoch.
    r, g = first["epoch"], second["epoch"]
    assert first["offset"] == second["offset"] == 0
    assert "recovered" not in first
    # The id names the position on every channel subscribed so far.
    assert subscribed[0]["id"] == f"readings/{r}/0"
    assert subscribed[1]["id"] == f"readings/{r}/0,general/{g}/0"
    stats = await (await client.get("/api/v1/stats")).json()
    assert stats["sse_streams"] == 1
    assert stats["connections"] == 1
    assert stats["channels"]["readings"]["subscribers"] == 1


async def test_channel_alone_defaults_and_general_by_default(client):
    _stream, subscribed = await open_sse(client, "", channels=1)
    assert subscribed[0]["json"]["channel"] == "general"


async def test_same_content_as_the_websocket_frame(client):
    ws = await open_ws(client, "/api/v1/ws?channel=general")
    stream, _ = await open_sse(client, "channel=general")
    pub = await client.app[BUS].publish(
        ["general"], "system_event", {"level": "info", "message": "hi", "data": {}}
    )
    msg = await ws.ws.receive(timeout=READ_TIMEOUT)
    event = await stream.event()
    assert event["data"] == msg.data
    assert event["event"] == "system_event"
    assert event["id"] == f"general/{pub.epochs['general']}/1"


async def test_overlapping_channels_deliver_once_and_id_names_both(client):
    stream, subscribed = await open_sse(client, "channel=a&channel=b")
    a, b = (s["json"]["epoch"] for s in subscribed)
    await publish(client, ["b", "a"], 1)
    await publish(client, ["a"], 2)
    await publish(client, ["b"], 3)
    got = [await stream.event() for _ in range(3)]
    assert [e["json"]["data"]["i"] for e in got] == [1, 2, 3]
    assert got[0]["json"]["channel"] == "b"
    assert got[0]["json"]["offsets"] == {"b": 1, "a": 1}
    assert [e["id"] for e in got] == [
        f"a/{a}/1,b/{b}/1",
        f"a/{a}/2,b/{b}/1",
        f"a/{a}/2,b/{b}/2",
    ]
    # A fence: the next event is this one, so nothing else came in between.
    await publish(client, ["a"], 4)
    assert (await stream.event())["json"]["data"]["i"] == 4


async def _resume(client, how: str) -> None:
    stream, _ = await open_sse(client, "channel=a&channel=b")
    await publish(client, ["a"], 1)
    await publish(client, ["a", "b"], 2)
    got = [await stream.event() for _ in range(2)]
    last_id = got[-1]["id"]
    stream.resp.close()
    await eventually(lambda: client.app[HUB].subscribers("a") == set())
    for i, channels in ((3, ["b"]), (4, ["a", "b"]), (5, ["a"]), (6, ["b", "a"])):
        await publish(client, channels, i)
    path = "/api/v1/sse?channel=a&channel=b"
    if how == "header":
        resp = await client.get(path, headers={"Last-Event-ID": last_id})
    else:
        resp = await client.get(f"{path}&last_event_id={last_id}")
    again = Stream(resp)
    assert await again.next() == {"retry": "3000"}
    # Each channel's `subscribed` is followed by what it missed: a's (4, 5, 6), then b's
    # not already sent through a (3).
    got = [await again.event() for _ in range(6)]
    assert [e["event"] for e in got] == ["subscribed", *["event"] * 3, "subscribed", "event"]
    assert got[0]["json"]["recovered"] is True
    assert got[4]["json"]["recovered"] is True
    assert [e["json"]["data"]["i"] for e in got if e["event"] == "event"] == [4, 5, 6, 3]
    await publish(client, ["b"], 7)
    live = await again.event()
    assert live["json"]["data"]["i"] == 7
    a, b = got[0]["json"]["epoch"], got[4]["json"]["epoch"]
    assert live["id"] == f"a/{a}/5,b/{b}/5"


async def test_last_event_id_header_resumes_exactly_on_every_channel(client):
    await _resume(client, "header")


async def test_last_event_id_query_resumes_exactly_on_every_channel(client):
    await _resume(client, "query")


async def test_bogus_last_event_id_is_not_recovered(client):
    await publish(client, ["a"], 1)
    _, subscribed = await open_sse(
        client, "channel=a&channel=b", headers={"Last-Event-ID": "not-one-of-ours"}
    )
    assert [s["json"]["recovered"] for s in subscribed] == [False, False]
    _, subscribed = await open_sse(client, "channel=a&last_event_id=a/0123/99")
    assert subscribed[0]["json"]["recovered"] is False


async def test_refusals_are_plain_http_errors(make_client):
    client = await make_client({"auth": {"allow_anonymous": False}})
    resp = await client.get("/api/v1/sse?channel=general")
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "unauthorized"
    resp = await client.get("/api/v1/sse?channel=general&token=garbage")
    assert resp.status == 401
    user = client.app[AUTH].mint("alice", "user")
    resp = await client.get("/api/v1/sse?channel=user:bob", headers=auth_header(user))
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "forbidden"
    for bad, field in (("channel=Bad!", "channel"), ("max_rate=0", "max_rate")):
        resp = await client.get(f"/api/v1/sse?{bad}", headers=auth_header(user))
        assert resp.status == 422
        body = await resp.json()
        assert body["error"]["code"] == "bad_request"
        assert field in body["error"]["details"]
    resp = await client.get("/api/v1/sse?channel=general&snapshot=true", headers=auth_header(user))
    assert resp.status == 422
    _stream, _ = await open_sse(client, "channel=user:alice", headers=auth_header(user))
    _, _ = await open_sse(client, f"channel=user:alice&token={user}")


async def test_cors_lets_allowed_origins_in(make_client):
    client = await make_client({"server": {"allowed_origins": ["http://dash.example"]}})
    resp = await client.get(
        "/api/v1/sse?channel=general", headers={"Origin": "http://dash.example"}
    )
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "http://dash.example"
    resp.close()
    resp = await client.get("/api/v1/sse?channel=general", headers={"Origin": "http://evil"})
    assert resp.status == 403


async def test_keepalive_comment(make_client):
    client = await make_client({"sse": {"keepalive": 1}})
    stream, _ = await open_sse(client)
    assert await stream.next(timeout=10) == {"comment": "keepalive"}


async def test_gone_reader_leaves_stats_without_waiting_for_a_keepalive(client):
    stream, _ = await open_sse(client)
    assert client.app[HUB].transports["sse"] == 1
    stream.resp.close()
    # sse.keepalive is 15 s here: the lost connection itself ends the stream.
    await eventually(lambda: client.app[HUB].clients == {}, timeout=5)
    assert client.app[HUB].transports["sse"] == 0


async def test_snapshot_on_a_readings_channel(client, token):
    headers = auth_header(token())
    resp = await client.post("/api/v1/sensors", json={"type": "t", "unit": "C"}, headers=headers)
    sensor_id = (await resp.json())["id"]
    resp = await client.post(
        "/api/v1/readings",
        json={"sensor_id": sensor_id, "timestamp": "2026-11-26T12:00:00Z", "values": {"t": 4.5}},
        headers=headers,
    )
    assert resp.status == 201
    stream, _ = await open_sse(client, f"channel=readings:{sensor_id}&snapshot=true")
    snap = await stream.event()
    assert snap["event"] == "entity_event"
    assert "id" not in snap
    assert snap["json"]["metadata"]["snapshot"] is True
    assert snap["json"]["data"]["values"] == {"t": 4.5}


async def test_shutdown_ends_every_stream(client):
    streams = [(await open_sse(client))[0] for _ in range(2)]
    await close_all(client.app)
    for stream in streams:
        await stream.ended()
    await eventually(lambda: client.app[HUB].clients == {})


async def _stalled_reader(host: str, port: int, path: str) -> socket.socket:
    """A raw HTTP client that reads the response head and then never reads again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, port))
    await loop.sock_sendall(sock, f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += await loop.sock_recv(sock, 1)
    assert head.startswith(b"HTTP/1.1 200")
    return sock


async def test_stalled_reader_is_cut_while_a_healthy_one_gets_everything(make_client):
    client = await make_client({"ws": {"max_queue_bytes": 64 * 1024}})
    hub = client.app[HUB]
    stalled = await _stalled_reader(client.host, client.port, "/api/v1/sse?channel=firehose")
    healthy, _ = await open_sse(client, "channel=firehose")
    await eventually(lambda: len(hub.subscribers("firehose")) == 2)
    bus = client.app[BUS]
    blob = "y" * 8000
    count = 400  # ~3.2 MB: more than the stalled reader's kernel buffers plus its budget
    received: list[int] = []

    async def read_all() -> None:
        while len(received) < count:
            received.append((await healthy.event())["json"]["data"]["i"])

    reader = asyncio.ensure_future(read_all())
    for i in range(count):
        await bus.publish(["firehose"], "event", {"data": {"i": i, "blob": blob}})
        if i % 20 == 0:
            await asyncio.sleep(0)  # let the healthy reader read while we publish
    await asyncio.wait_for(reader, 30)
    assert received == list(range(count))
    assert hub.stats.dropped_slow_consumers == 1
    stalled.close()
    await eventually(lambda: len(hub.clients) == 1, timeout=8)


async def test_sigterm_ends_streams_cleanly(tmp_path):
    from tests.test_cli import SHUTDOWN_TIMEOUT, Server

    server = Server(tmp_path)
    server.start()
    try:
        async with aiohttp.ClientSession() as session:
            await server.wait_healthy(session)
            resp = await session.get(f"{server.url}/api/v1/sse?channel=readings")
            assert resp.status == 200
            stream = Stream(resp)
            await stream.opened(1)
            assert server.proc is not None
            server.proc.send_signal(signal.SIGTERM)
            # The chunked body ends with its last chunk: no error, no truncation.
            await stream.ended(timeout=SHUTDOWN_TIMEOUT + 2)
            rc = await asyncio.to_thread(server.proc.wait, SHUTDOWN_TIMEOUT + 2)
            assert rc == 0, server.log()
            assert "Traceback" not in server.log()
    finally:
        server.kill()


async def test_resume_counts_what_came_through_another_channel(client):
    stream, subscribed = await open_sse(client, "channel=a&channel=b")
    first_id = subscribed[-1]["id"]
    stream.resp.close()
    await eventually(lambda: client.app[HUB].clients == {})
    await publish(client, ["a", "b"], 1)
    again = Stream(await client.get("/api/v1/sse?channel=a&channel=b&last_event_id=" + first_id))
    assert await again.next() == {"retry": "3000"}
    got = [await again.event() for _ in range(3)]
    # 1 comes through a; b's recovery skips it and says so in the next id.
    assert [e["event"] for e in got] == ["subscribed", "event", "subscribed"]
    await publish(client, ["a"], 2)
    live = await again.event()
    a, b = got[0]["json"]["epoch"], got[2]["json"]["epoch"]
    assert live["id"] == f"a/{a}/2,b/{b}/1"
    again.resp.close()
    await eventually(lambda: client.app[HUB].clients == {})
    await publish(client, ["b"], 3)
    third, opened = await open_sse(client, f"channel=a&channel=b&last_event_id={live['id']}")
    assert [s["json"]["recovered"] for s in opened] == [True, True]
    assert (await third.event())["json"]["data"]["i"] == 3
    await publish(client, ["a"], 4)
    assert (await third.event())["json"]["data"]["i"] == 4
