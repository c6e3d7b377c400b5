"""Slow consumers judged by lag, not by one burst (SPEC §4), on link-like client sockets.

A 10,000-reading batch is ~3.9 MB framed for `readings`: a dashboard that reads it at its
link's speed keeps its socket; one that stops reading is closed with 4008 "slow consumer"
and its backlog released; a publication that could never fit a budget is refused (413).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from server import codec
from server.keys import AUTH, BUS, HUB, SERVICES
from tests.api.test_system import error_of
from tests.conftest import WS, auth_header, eventually, open_ws
from tests.ws.link import RawSocket, link_session

BATCH = 10_000


async def add_sensor(client: TestClient) -> int:
    sql = "INSERT INTO sensors (type, thresholds, device) VALUES (?, ?, ?) RETURNING id"
    return int(await client.app[SERVICES].storage.fetchval(sql, "temperature", {}, "tester"))


async def post_batch(client: TestClient, sid: int) -> None:
    body = [
        {"sensor_id": sid, "timestamp": f"2024-05-01T12:00:00.{i:06d}Z", "values": {"i": i}}
        for i in range(BATCH)
    ]
    tok = client.app[AUTH].mint("tester", "service")
    resp = await client.post("/api/v1/readings", data=codec.dumps(body), headers=auth_header(tok))
    assert resp.status == 201, await resp.text()


async def read_readings(ws: aiohttp.ClientWebSocketResponse, n: int) -> list[dict[str, Any]]:
    """Read as fast as the link allows until n readings arrived; fails on anything else."""
    got: list[dict[str, Any]] = []
    while len(got) < n:
        msg = await ws.receive(timeout=30)
        assert msg.type is aiohttp.WSMsgType.TEXT, f"socket ended: {msg!r}"
        frame = codec.loads(msg.data)
        assert frame["type"] == "entity_event", frame
        got.append(frame)
    return got


def assert_in_order(frames: list[dict[str, Any]]) -> None:
    assert [f["data"]["values"]["i"] for f in frames] == list(range(BATCH))
    offsets = [f["offset"] for f in frames]
    assert offsets == list(range(offsets[0], offsets[0] + BATCH))


async def link_ws(session: aiohttp.ClientSession, client: TestClient, path: str) -> Any:
    ws = await session.ws_connect(f"http://{client.host}:{client.port}{path}")
    for expected in ("connection", "subscribed"):
        assert codec.loads((await ws.receive(timeout=5)).data)["type"] == expected
    return ws


async def test_a_reader_on_a_real_link_gets_a_whole_10000_reading_batch(make_client):
    client = await make_client()
    hub = client.app[HUB]
    sid = await add_sensor(client)
    async with link_session() as session:
        ws = await link_ws(session, client, "/api/v1/ws?channel=readings")
        reader = asyncio.ensure_future(read_readings(ws, BATCH))
        await post_batch(client, sid)
        frames = await reader
        assert_in_order(frames)
        await ws.send_str('{"type":"ping","id":1}')
        pong = codec.loads((await ws.receive(timeout=5)).data)
        assert (pong["type"], pong["id"]) == ("pong", 1)
        assert hub.stats.dropped_slow_consumers == 0
        await ws.close()


async def test_a_reader_that_stops_is_closed_4008_and_its_backlog_released(make_client):
    client = await make_client({"ws": {"max_lag": 1}})
    hub = client.app[HUB]
    sid = await add_sensor(client)
    stalled = await RawSocket.open(client.host, client.port, "/api/v1/ws?channel=readings")
    async with link_session() as session:
        healthy = await link_ws(session, client, "/api/v1/ws?channel=readings")
        await eventually(lambda: len(hub.channels.get("readings", ())) == 2)
        # The stalled socket connected first.
        slow = min(hub.channels["readings"], key=lambda c: c.connected_at)
        reader = asyncio.ensure_future(read_readings(healthy, BATCH))
        await post_batch(client, sid)
        assert_in_order(await reader)

        await eventually(lambda: hub.stats.dropped_slow_consumers == 1, timeout=15)
        assert slow.closing
        # Released at once: what is left is the transport's tail of whole frames.
        assert slow.buffered() <= slow.limit
        _, code, reason = await stalled.until_close()
        assert (code, reason) == (4008, "slow consumer")
        stalled.close()

        await healthy.send_str('{"type":"ping","id":2}')
        assert codec.loads((await healthy.receive(timeout=5)).data)["type"] == "pong"
        await eventually(lambda: len(hub.clients) == 1, timeout=10)
        await healthy.close()


async def test_a_big_batch_yields_to_the_loop_between_chunks_and_keeps_order(client):
    hub, bus = client.app[HUB], client.app[BUS]
    ws = await open_ws(client, "/api/v1/ws?channel=firehose")
    events = [(("firehose",), "event", {"data": i}) for i in range(BATCH)]
    publishing = asyncio.ensure_future(bus.publish_many(events))
    for _ in range(1000):  # a few loop iterations: the publisher, then the first chunk
        await asyncio.sleep(0)
        if hub.stats.publications:
            break
    # This coroutine ran between two chunks: the batch is not delivered in one go.
    assert hub.stats.publications < BATCH
    assert not publishing.done()
    # A publication made meanwhile waits behind the batch, in publishing order.
    await bus.publish(["firehose"], "event", {"data": "after"})
    await publishing
    got = [(await ws.recv_type("event"))["data"] for _ in range(BATCH + 1)]
    assert got == [*range(BATCH), "after"]
    assert hub.stats.publications == BATCH + 1


async def test_a_publication_over_the_budget_is_refused_413_and_not_delivered(make_client):
    client = await make_client({"ws": {"max_queue_bytes": 16 * 1024}})
    ws = await open_ws(client, "/api/v1/ws?channel=general")
    tok = client.app[AUTH].mint("svc", "service")
    big = {"blob": "x" * (20 * 1024)}  # under ws.max_message_bytes, over the budget

    resp = await client.post("/api/v1/events/general", json=big, headers=auth_header(tok))
    body = await error_of(resp, 413, "too_large")
    assert body["details"]["max_bytes"] == 16 * 1024

    resp = await client.post(
        "/api/v1/notify", json={"event": "x", "payload": big}, headers=auth_header(tok)
    )
    await error_of(resp, 413, "too_large")
    history = await (await client.get("/api/v1/notifications", headers=auth_header(tok))).json()
    assert history["items"] == []

    service = WS(await client.ws_connect(f"/api/v1/ws?token={tok}"))
    await service.recv_type("connection")
    await service.recv_type("subscribed")
    reply = await service.request(
        {"type": "request", "id": 3, "resource": "events", "action": "create",
         "payload": {"channel": "general", "event": big}}
    )  # fmt: skip
    assert (reply["type"], reply["id"], reply["code"]) == ("error", 3, "too_large")

    # Under the budget it goes through; nothing of the refused ones came before it.
    resp = await client.post("/api/v1/events/general", json={"ok": 1}, headers=auth_header(tok))
    assert resp.status == 202
    frame = await ws.recv_type("event")
    assert frame["data"] == {"ok": 1}
    assert frame["offset"] == 1


async def test_a_reading_over_the_budget_is_refused_413_before_it_is_stored(make_client):
    client = await make_client({"ws": {"max_queue_bytes": 64 * 1024}})
    sid = await add_sensor(client)
    tok = client.app[AUTH].mint("tester", "service")

    def reading(metrics: int) -> dict[str, Any]:
        return {"sensor_id": sid, "values": {f"{i:0>100}": i for i in range(metrics)}}

    batch = [reading(1), reading(1000)]
    resp = await client.post("/api/v1/readings", json=batch, headers=auth_header(tok))
    await error_of(resp, 413, "too_large")
    storage = client.app[SERVICES].storage
    assert await storage.fetchval("SELECT count(*) FROM readings") == 0
    # Many metrics that still fit are fine.
    resp = await client.post("/api/v1/readings", json=reading(200), headers=auth_header(tok))
    assert resp.status == 201
    assert await storage.fetchval("SELECT count(*) FROM readings") == 1


async def test_an_mqtt_batch_refuses_only_the_body_over_the_budget(make_client):
    client = await make_client({"ws": {"max_queue_bytes": 64 * 1024}})
    sid = await add_sensor(client)
    now = datetime.now(UTC)
    stamp = now.isoformat()
    small = [(sid, now, {"t": 1.0}, stamp)]
    huge = [(sid, now, {f"{i:0>100}": float(i) for i in range(1000)}, stamp)]

    answers = await client.app[SERVICES].readings.ingest_each([small, huge])

    assert answers[0] is None
    assert answers[1] is not None
    assert "outbound budget" in answers[1]["_schema"][0]
    storage = client.app[SERVICES].storage
    assert await storage.fetchval("SELECT count(*) FROM readings") == 1
