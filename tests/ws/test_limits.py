"""Limits: frame size, floods, duplicates, connection caps, slow consumers, dead peers."""

from __future__ import annotations

import aiohttp

from server.hub.connection import TokenBucket
from server.keys import BUS, HUB
from server.ws.endpoint import close_all
from tests.conftest import WS, eventually, open_ws
from tests.ws.link import RawSocket


async def test_frame_over_max_message_bytes_closes_1009(client, connect):
    ws = await connect()
    await ws.send('{"type":"ping","pad":"' + "x" * 70_000 + '"}')
    code, _ = await ws.closed()
    assert code == 1009
    await eventually(lambda: client.app[HUB].clients == {})


async def test_frame_just_under_the_limit_is_handled(client, connect):
    ws = await connect()
    pad = "x" * (65536 - 40)
    pong = await ws.request({"type": "ping", "id": 1, "pad": pad})
    assert pong["type"] == "pong"


async def test_flood_gets_rate_limited_errors_then_recovers(make_client):
    client = await make_client({"ws": {"rate_limit": 10, "rate_burst": 5}})
    ws = await open_ws(client)
    # The bucket's clock stands still during the burst: on a slow machine the real one
    # refilled a token while the 8 frames were read, and the 6th got a pong.
    (conn,) = client.app[HUB].clients.values()
    now = 1000.0
    conn.rate = TokenBucket(10, 5, clock=lambda: now)
    for i in range(8):
        await ws.send({"type": "ping", "id": i})
    replies = [await ws.recv() for _ in range(8)]
    assert [r["type"] for r in replies[:5]] == ["pong"] * 5
    assert {r["type"] for r in replies[5:]} == {"error"}
    assert {r["code"] for r in replies[5:]} == {"rate_limited"}
    assert replies[5]["details"]["retry_after"] == 0.1  # one token at 10/s
    now += 0.25  # the bucket refills at 10/s
    assert (await ws.request({"type": "ping", "id": "ok"}))["type"] == "pong"


async def test_sustained_flood_closes_4008_after_five_seconds(make_client):
    """The grace is driven by the bucket's injected clock: the boundary is exact and the
    test does not spend five seconds (nor fail when a loaded CPU stretches them)."""
    client = await make_client({"ws": {"rate_limit": 1, "rate_burst": 1}})
    ws = await open_ws(client)
    (conn,) = client.app[HUB].clients.values()
    now = 1000.0  # binary-exact steps below: no rounding at the boundary
    conn.rate = TokenBucket(1, 1, clock=lambda: now)

    async def reply() -> str:
        frame = await ws.request({"type": "ping"})
        return frame["type"] if frame["type"] == "pong" else frame["code"]

    assert [await reply(), await reply()] == ["pong", "rate_limited"]  # over since 1000
    for second in range(1, 5):
        now = 1000.0 + second  # one token refilled a second: in, then the next refused
        assert [await reply(), await reply()] == ["pong", "rate_limited"]
    now = 1004.75
    assert await reply() == "rate_limited"  # 4.75 s over the limit: still only refused
    assert client.app[HUB].stats.closed_by_policy == 0
    now = 1005.0
    assert await reply() == "pong"
    await ws.send({"type": "ping"})  # refused 5 s after the flood began: closed
    assert await ws.closed() == (4008, "rate limit exceeded")
    assert client.app[HUB].stats.closed_by_policy == 1


async def test_duplicate_client_id_is_rejected_by_default(client):
    first = await open_ws(client, "/api/v1/ws?client_id=dev-1")
    second = await open_ws(client, "/api/v1/ws?client_id=dev-1", handshake=False)
    assert await second.closed() == (4009, "duplicate client_id")
    assert (await first.request({"type": "ping"}))["type"] == "pong"


async def test_duplicate_client_id_replace_closes_the_old_socket(make_client):
    client = await make_client({"ws": {"duplicate_client_id": "replace"}})
    first = await open_ws(client, "/api/v1/ws?client_id=dev-1")
    second = await open_ws(client, "/api/v1/ws?client_id=dev-1")
    assert await first.closed() == (4009, "replaced by a new connection")
    assert (await second.request({"type": "ping"}))["type"] == "pong"
    assert client.app[HUB].clients["dev-1"].ws is not None
    await client.app[BUS].publish(["general"], "event", {"data": 1})
    assert (await second.recv_type("event"))["data"] == 1


async def test_connection_limits_close_4008_with_a_reason(make_client):
    client = await make_client({"ws": {"max_connections": 2}})
    keep = [await open_ws(client) for _ in range(2)]
    extra = await open_ws(client, handshake=False)
    assert await extra.closed() == (4008, "too many connections")
    await keep[0].close()
    await eventually(lambda: len(client.app[HUB].clients) == 1)
    again = await open_ws(client)
    assert (await again.request({"type": "ping"}))["type"] == "pong"


async def test_per_ip_limit(make_client):
    client = await make_client({"ws": {"max_connections_per_ip": 1}})
    await open_ws(client)
    extra = await open_ws(client, handshake=False)
    assert await extra.closed() == (4008, "too many connections from this address")


async def test_stalled_reader_is_dropped_4008_while_others_keep_receiving(make_client):
    client = await make_client({"ws": {"max_queue_bytes": 64 * 1024, "max_lag": 1}})
    hub = client.app[HUB]
    # Completes the handshake, then never reads.
    stalled = await RawSocket.open(client.host, client.port, "/api/v1/ws?channel=firehose")
    healthy = await open_ws(client, "/api/v1/ws?channel=firehose")
    await eventually(lambda: len(hub.channels.get("firehose", ())) == 2)
    bus = client.app[BUS]
    blob = "y" * 8000
    count = 400  # ~3.2 MB: more than the stalled socket's kernel buffers plus its budget
    received = 0
    for i in range(count):
        await bus.publish(["firehose"], "event", {"data": {"i": i, "blob": blob}})
        if i % 20 == 0:
            # Let the healthy client read while we publish.
            while True:
                try:
                    msg = await healthy.ws.receive(timeout=0.001)
                except TimeoutError:
                    break
                assert msg.type is aiohttp.WSMsgType.TEXT
                received += 1
    while received < count:
        msg = await healthy.ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.TEXT
        received += 1
    assert received == count
    # Judged by lag: dropped once it has stayed behind for ws.max_lag without draining.
    await eventually(lambda: hub.stats.dropped_slow_consumers == 1, timeout=10)
    slow = [c for c in hub.clients.values() if c.ws is not None and c.closing]
    assert len(slow) <= 1
    stalled.close()
    await eventually(lambda: len(hub.clients) == 1, timeout=8)


async def test_peer_that_misses_the_pong_is_closed_and_cleaned_up(make_client):
    client = await make_client({"ws": {"heartbeat": 1.0}})
    ws = await client.ws_connect("/api/v1/ws", autoping=False)
    assert (await ws.receive_json())["type"] == "connection"
    await eventually(lambda: client.app[HUB].clients == {}, timeout=10)
    await ws.close()


async def test_peer_answering_pings_stays_connected(make_client):
    """Two pings answered: the second proves the server got the first pong (else it closes
    heartbeat/2 after the ping). 2 s leaves aiohttp's pong window at 1 s, which a stall of
    the shared loop cannot use up; no timer on the test side."""
    client = await make_client({"ws": {"heartbeat": 2.0}})
    raw = await client.ws_connect("/api/v1/ws", autoping=False)
    pings = 0
    while pings < 2:
        msg = await raw.receive(timeout=10)
        if msg.type is aiohttp.WSMsgType.PING:
            pings += 1
            await raw.pong(msg.data)
        else:
            assert msg.type is aiohttp.WSMsgType.TEXT, msg  # the handshake frames
    ws = WS(raw)
    assert (await ws.request({"type": "ping", "id": 1}))["type"] == "pong"
    assert len(client.app[HUB].clients) == 1


async def test_shutdown_closes_every_socket_with_1001(client):
    sockets = [await open_ws(client) for _ in range(3)]
    await close_all(client.app)
    for ws in sockets:
        assert await ws.closed() == (1001, "server shutting down")
    await eventually(lambda: client.app[HUB].clients == {})


async def test_compression_is_off_unless_enabled(client):
    ws = await client.ws_connect("/api/v1/ws", compress=15)
    assert ws.compress == 0
    await ws.close()


async def test_opt_in_compression_delivers_in_order(make_client):
    client = await make_client({"ws": {"compression": True}})
    raw = await client.ws_connect("/api/v1/ws?channel=feed", compress=15)
    assert raw.compress == 15
    ws = WS(raw)
    assert (await ws.recv_type("connection"))["status"] == "connected"
    await ws.recv_type("subscribed")
    for i in range(50):
        await client.app[BUS].publish(["feed"], "event", {"data": {"i": i, "pad": "z" * 3000}})
    got = [(await ws.recv_type("event"))["data"]["i"] for _ in range(50)]
    assert got == list(range(50))
    assert (await ws.request({"type": "ping", "id": 1}))["type"] == "pong"
