"""Batches (Bus.publish_many): runs of publications on one subscribed channel are written
to each socket as one buffer; every socket still gets every frame once, in order, as the
per-publication path would frame it, including sockets that recover, speak a seed's
dialect or are excluded."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from server.keys import AUTH, BUS, HUB
from tests.conftest import Connect, open_ws


def readings(n: int, start: int = 0) -> list[tuple[list[str], str, dict[str, Any]]]:
    return [
        (["readings", f"readings:{i % 3}", f"sensors:{i % 3}"], "entity_event", {"n": i})
        for i in range(start, start + n)
    ]


async def test_a_batch_reaches_every_socket_once_in_order_with_the_same_bytes(
    client: TestClient, connect: Connect
):
    socks = [await connect("/api/v1/ws?channel=readings") for _ in range(3)]

    pubs = await client.app[BUS].publish_many(readings(50))

    raws = [[(await s.ws.receive(timeout=5)).data for _ in range(50)] for s in socks]
    assert raws[0] == raws[1] == raws[2]
    # The bytes of the per-publication framing of each, in publishing order.
    assert raws[0] == [pub.payload("readings").decode() for pub in pubs]
    for s in socks:
        await s.nothing()
    stats = client.app[HUB].stats
    assert stats.messages_out == 150
    assert stats.publications == 50


async def test_runs_break_where_the_reached_channel_changes_and_order_holds(
    client: TestClient, connect: Connect
):
    both = await connect("/api/v1/ws?channel=a,b")
    only_a = await connect("/api/v1/ws?channel=a")
    events = [([ch], "event", {"data": i}) for i, ch in enumerate("aabbbaab")]
    # One publication on both channels: reaches `both` once, named `a`.
    events.insert(4, (["a", "b"], "event", {"data": "ab"}))

    await client.app[BUS].publish_many(events)

    got = [await both.recv_type("event") for _ in range(9)]
    assert [g["data"] for g in got] == [0, 1, 2, 3, "ab", 4, 5, 6, 7]
    got_a = [await only_a.recv_type("event") for _ in range(5)]
    assert [g["data"] for g in got_a] == [0, 1, "ab", 5, 6]
    await both.nothing()
    await only_a.nothing()


async def test_a_recovering_socket_gets_a_batch_after_its_history_without_duplicates(
    client: TestClient, connect: Connect
):
    bus = client.app[BUS]
    backend = bus.backend
    await bus.publish_many(readings(3))
    original = backend.recover

    async def recover_while_a_batch_lands(channel: str, since: Any) -> Any:
        result = await original(channel, since)
        await bus.publish_many(readings(4, start=3))
        return result

    backend.recover = recover_while_a_batch_lands
    plain = await connect("/api/v1/ws?channel=readings")
    ws = await connect()
    await ws.send(
        {
            "type": "subscribe",
            "channel": "readings",
            "since": {"offset": 0, "epoch": (await bus.position("readings")).epoch},
        }
    )

    assert (await ws.recv_type("subscribed"))["recovered"] is True
    got = [await ws.recv_type("entity_event") for _ in range(7)]
    assert [g["n"] for g in got] == list(range(7))
    assert [g["offset"] for g in got] == list(range(1, 8))
    await ws.nothing()
    assert [(await plain.recv_type("entity_event"))["n"] for _ in range(4)] == [3, 4, 5, 6]


async def test_a_seed_socket_gets_a_batch_translated(make_client: Any):
    client = await make_client({"compat": {"ws_path": "client_id"}})
    seed = await open_ws(client, "/ws/c1", handshake=False)
    await seed.recv_type("connection_established")
    for _ in range(2):
        await seed.recv_type("subscribed")
    plain = await open_ws(client, "/api/v1/ws?channel=general")
    events = [(["general"], "notification", {"event": f"e{i}", "payload": {}}) for i in range(5)]

    await client.app[BUS].publish_many(events)

    assert [(await seed.recv_type("system_notification"))["event"] for _ in range(5)] == [
        f"e{i}" for i in range(5)
    ]
    assert [(await plain.recv_type("notification"))["event"] for _ in range(5)] == [
        f"e{i}" for i in range(5)
    ]


async def test_a_compressed_socket_gets_a_batch_frame_by_frame(make_client: Any):
    client = await make_client({"ws": {"compression": True}})
    token = client.app[AUTH].mint("x", "service")
    deflated = await open_ws(client, f"/api/v1/ws?channel=readings&token={token}", compress=15)
    plain = await open_ws(client, "/api/v1/ws?channel=readings", compress=0)

    await client.app[BUS].publish_many(readings(20))

    for ws in (deflated, plain):
        got = [await ws.recv_type("entity_event") for _ in range(20)]
        assert [g["n"] for g in got] == list(range(20))
