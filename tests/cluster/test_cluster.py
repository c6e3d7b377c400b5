"""Two instances over one Redis behave as one server: delivery both ways, exactly once,
recovery on the other instance and after a restart, presence and typing, shared storage."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from server.keys import BUS, HUB
from tests.cluster.conftest import Instance, service_token, until
from tests.conftest import WS, open_ws


async def post_event(client: TestClient, channel: str, data: Any) -> dict[str, Any]:
    resp = await client.post(
        f"/api/v1/events/{channel}", json={"v": data}, headers=service_token(client)
    )
    assert resp.status == 202, await resp.text()
    return await resp.json()


async def test_publications_cross_instances_both_ways_in_offset_order(instance: Instance):
    a, b = await instance(), await instance()
    on_a = await open_ws(a, "/api/v1/ws?channel=feed")
    on_b = await open_ws(b, "/api/v1/ws?channel=feed")
    first = await post_event(a, "feed", 1)
    second = await post_event(b, "feed", 2)
    third = await post_event(a, "feed", 3)
    assert [first["offset"], second["offset"], third["offset"]] == [1, 2, 3]
    assert len({first["epoch"], second["epoch"], third["epoch"]}) == 1
    for ws in (on_a, on_b):
        frames = [await ws.recv_type("event") for _ in range(3)]
        assert [(f["data"]["v"], f["offset"], f["epoch"]) for f in frames] == [
            (1, 1, first["epoch"]),
            (2, 2, first["epoch"]),
            (3, 3, first["epoch"]),
        ]
    assert a.app[BUS].instance != b.app[BUS].instance
    stats = await (await b.get("/api/v1/stats")).json()
    assert (stats["instance"], stats["connections"]) == (b.app[BUS].instance, 1)


async def test_overlapping_channels_from_another_instance_deliver_once(instance: Instance):
    a, b = await instance(), await instance()
    ws = await open_ws(b, "/api/v1/ws?channel=readings,readings:5,sensors:5")
    await a.app[BUS].publish(["readings", "readings:5", "sensors:5"], "event", {"data": "x"})
    # The fence: published after, on one of the socket's channels; a duplicate of the
    # first would arrive before it (one ordered pub/sub stream per instance).
    await a.app[BUS].publish(["sensors:5"], "event", {"data": "fence"})
    frame = await ws.recv_type("event")
    offsets = {"readings": 1, "readings:5": 1, "sensors:5": 1}
    assert (frame["data"], frame["channel"], frame["offsets"]) == ("x", "readings", offsets)
    fence = await ws.recv_type("event")
    assert (fence["data"], fence["channel"], fence["offset"]) == ("fence", "sensors:5", 2)
    assert b.app[HUB].stats.messages_out == 2


async def recover_on(client: TestClient, channel: str, since: dict[str, Any]) -> WS:
    ws = await open_ws(client, "/api/v1/ws?channel=general")
    await ws.send({"type": "subscribe", "channel": channel, "since": since})
    return ws


async def test_recovery_after_reconnecting_to_the_other_instance(instance: Instance):
    a, b = await instance(), await instance()
    ws = await open_ws(a, "/api/v1/ws?channel=feed")
    await post_event(a, "feed", "seen")
    seen = await ws.recv_type("event")
    await ws.close()
    await post_event(a, "feed", "missed-1")
    await post_event(b, "feed", "missed-2")
    again = await recover_on(b, "feed", {"offset": seen["offset"], "epoch": seen["epoch"]})
    sub = await again.recv_type("subscribed")
    assert (sub["recovered"], sub["offset"], sub["epoch"]) == (True, 3, seen["epoch"])
    got = [await again.recv_type("event") for _ in range(2)]
    assert [(f["data"]["v"], f["offset"]) for f in got] == [("missed-1", 2), ("missed-2", 3)]
    # No duplicate and no gap at the switch to live.
    await post_event(a, "feed", "live")
    live = await again.recv_type("event")
    assert (live["data"]["v"], live["offset"]) == ("live", 4)


async def test_recovery_after_the_instance_restarts(instance: Instance):
    a, b = await instance(), await instance()
    ws = await open_ws(a, "/api/v1/ws?channel=feed")
    await post_event(b, "feed", "seen")
    seen = await ws.recv_type("event")
    await ws.close()
    await a.close()
    await post_event(b, "feed", "while-a-was-down")
    restarted = await instance()
    again = await recover_on(restarted, "feed", {"offset": seen["offset"], "epoch": seen["epoch"]})
    assert (await again.recv_type("subscribed"))["recovered"] is True
    frame = await again.recv_type("event")
    assert (frame["data"]["v"], frame["offset"], frame["epoch"]) == (
        "while-a-was-down",
        2,
        seen["epoch"],
    )


async def test_presence_and_typing_cross_instances(instance: Instance):
    a, b = await instance(), await instance()
    alice = await open_ws(a, "/ws/lobby?user_id=alice&username=Alice")
    bob = WS(await b.ws_connect("/ws/lobby?user_id=bob&username=Bob"))
    await bob.recv_type("connection")
    await bob.recv_type("connected")
    sub = await bob.recv_type("subscribed")
    assert sorted(m["user_id"] for m in sub["presence"]) == ["alice", "bob"]
    joined = await alice.recv_type("user_joined")
    assert joined["data"] == {"user_id": "bob", "username": "Bob"}
    # A second tab of bob's, on the other instance: no second user_joined.
    bob2 = await open_ws(a, "/ws/lobby?user_id=bob&username=Bob")
    resp = await a.get("/api/v1/rooms/lobby/connections")
    body = await resp.json()
    assert {u["user_id"]: u["connections"] for u in body["users"]} == {"alice": 1, "bob": 2}
    await bob.send({"type": "typing", "is_typing": True})
    typing = await alice.recv_type("typing")
    assert typing["data"] == {"user_id": "bob", "username": "Bob", "is_typing": True}
    rooms = await (await b.get("/api/v1/rooms")).json()
    assert [(r["room"], r["users"]) for r in rooms["items"]] == [("lobby", 2)]
    await bob.close()
    await bob2.close()
    left = await alice.recv_type("user_left")
    assert left["data"] == {"user_id": "bob", "username": "Bob"}
    # Fence: a message from alice arrives next, so no second user_left came first.
    await alice.send({"type": "message", "content": "bye"})
    await alice.recv_type("message_sent")
    assert (await alice.recv_type("message"))["data"]["content"] == "bye"


async def test_a_sensor_created_on_one_instance_is_read_on_the_other(instance: Instance):
    a, b = await instance(), await instance()
    watcher = await open_ws(b, "/api/v1/ws?channel=sensors")
    resp = await a.post("/api/v1/sensors", json={"type": "temperature"}, headers=service_token(a))
    assert resp.status == 201
    created = await resp.json()
    resp = await b.get(f"/api/v1/sensors/{created['id']}")
    assert resp.status == 200
    assert await resp.json() == created
    event = await watcher.recv_type("entity_event")
    assert (event["event_type"], event["entity_id"]) == ("created", created["id"])


async def test_a_readings_batch_is_one_round_trip_and_reaches_the_other_instance(
    instance: Instance,
):
    a, b = await instance(), await instance()
    resp = await a.post("/api/v1/sensors", json={"type": "t"}, headers=service_token(a))
    sensor = (await resp.json())["id"]
    ws = await open_ws(b, f"/api/v1/ws?channel=readings:{sensor}")
    redis = a.app[BUS].backend.redis  # type: ignore[attr-defined]
    calls: list[Any] = []
    original = redis.evalsha

    async def counted(*args: Any) -> Any:
        calls.append(args[0])
        return await original(*args)

    redis.evalsha = counted
    batch = [{"sensor_id": sensor, "values": {"t": float(i)}} for i in range(50)]
    resp = await a.post("/api/v1/readings", json=batch, headers=service_token(a))
    assert resp.status == 201
    assert len(calls) == 1
    frames = [await ws.recv_type("entity_event") for _ in range(50)]
    assert [f["data"]["values"]["t"] for f in frames] == [float(i) for i in range(50)]
    assert [f["offset"] for f in frames] == list(range(1, 51))


async def test_health_names_the_redis_check(instance: Instance):
    a = await instance()
    body = await (await a.get("/health")).json()
    assert body["status"] == "healthy"
    assert body["checks"]["redis"] == {"status": "ok"}
    assert body["checks"]["bus"]["backend"] == "redis"
    await until(lambda: _true())


async def _true() -> bool:
    return True
