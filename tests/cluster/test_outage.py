"""Redis goes away (killed, restarted, or the pub/sub connection killed): SPEC §7.

Each test runs its own redis-server on a free port and kills only that process."""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis

from server.keys import BUS
from tests.cluster.conftest import Instance, until
from tests.cluster.test_cluster import post_event
from tests.conftest import open_ws
from tests.redis_util import PrivateRedis


async def health(client) -> tuple[int, dict]:
    resp = await client.get("/health")
    return resp.status, await resp.json()


async def test_redis_killed_and_restarted(instance: Instance, private_redis: PrivateRedis, caplog):
    caplog.set_level(logging.WARNING, logger="server.bus.redis")
    a, b = await instance(private_redis.url), await instance(private_redis.url)
    on_a = await open_ws(a, "/api/v1/ws?channel=feed")
    on_b = await open_ws(b, "/api/v1/ws?channel=feed")
    await post_event(a, "feed", "before")
    before = await on_b.recv_type("event")
    assert (await on_a.recv_type("event"))["offset"] == before["offset"] == 1
    tasks_before = len(asyncio.all_tasks())

    private_redis.kill()
    await until(lambda: _down(a))
    status, body = await health(a)
    assert (status, body["status"], body["checks"]["redis"]) == (
        200,
        "degraded",
        {"status": "down"},
    )
    # REST writes still succeed and reach this instance's sockets, under an outage epoch.
    during = await post_event(a, "feed", "during")
    frame = await on_a.recv_type("event")
    assert (frame["data"]["v"], frame["epoch"]) == ("during", during["epoch"])
    assert during["epoch"] != before["epoch"]
    # A recovery that spans the outage is not recovered.
    lost = await open_ws(b, "/api/v1/ws?channel=general")
    await lost.send(
        {"type": "subscribe", "channel": "feed", "since": {"offset": 1, "epoch": before["epoch"]}}
    )
    assert (await lost.recv_type("subscribed"))["recovered"] is False
    await lost.close()

    private_redis.start()
    await until(lambda: _up(a))
    await until(lambda: _up(b))
    # Redis lost everything: each instance's sockets hear their stream restarted.
    reset_a = await on_a.recv_type("subscribed")
    reset_b = await on_b.recv_type("subscribed")
    assert reset_a["recovered"] is reset_b["recovered"] is False
    # Cross-instance delivery is back.
    after = await post_event(a, "feed", "after")
    got = await on_b.recv_type("event")
    assert (got["data"]["v"], got["offset"], got["epoch"]) == (
        "after",
        after["offset"],
        after["epoch"],
    )
    assert (await on_a.recv_type("event"))["data"]["v"] == "after"
    assert (await health(a))[1]["status"] == "healthy"
    # Said once when it went and once when it came back, per instance.
    gone = [r for r in caplog.records if "Redis unavailable" in r.getMessage()]
    back = [r for r in caplog.records if "Redis is back" in r.getMessage()]
    assert (len(gone), len(back)) == (2, 2)
    # No task per reconnect attempt is left behind.
    assert len(asyncio.all_tasks()) <= tasks_before


async def _down(client) -> bool:
    return not client.app[BUS].backend.up


async def _up(client) -> bool:
    return bool(client.app[BUS].backend.up)


async def test_killed_pubsub_connection_is_replaced_without_a_gap(
    instance: Instance, private_redis: PrivateRedis
):
    a, b = await instance(private_redis.url), await instance(private_redis.url)
    ws = await open_ws(b, "/api/v1/ws?channel=feed")
    reconnects = b.app[BUS].backend.reconnects
    admin = aioredis.Redis(port=private_redis.port)
    killed = await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    assert killed >= 1  # b's (a listens to nothing, so its connection is no pub/sub one yet)
    # Published while b's pub/sub connection is being replaced: caught up from the stream.
    for i in range(10):
        await post_event(a, "feed", i)
    frames = [await ws.recv_type("event") for _ in range(10)]
    assert [(f["data"]["v"], f["offset"]) for f in frames] == [(i, i + 1) for i in range(10)]
    await until(lambda: _reconnected(b, reconnects))
    await post_event(a, "feed", "fence")
    assert (await ws.recv_type("event"))["data"]["v"] == "fence"
    await admin.aclose()


async def _reconnected(client, before: int) -> bool:
    backend = client.app[BUS].backend
    return backend.reconnects > before and backend.up


async def test_redis_down_at_start_serves_this_instance_and_joins_later(
    instance: Instance, private_redis: PrivateRedis
):
    private_redis.kill()
    a = await instance(private_redis.url)
    ws = await open_ws(a, "/api/v1/ws?channel=feed")
    status, body = await health(a)
    assert (status, body["status"]) == (200, "degraded")
    await post_event(a, "feed", "alone")
    assert (await ws.recv_type("event"))["data"]["v"] == "alone"
    private_redis.start()
    await until(lambda: _up(a))
    b = await instance(private_redis.url)
    await post_event(b, "feed", "together")
    frame = await ws.recv_type("subscribed")  # its outage stream was retired
    assert frame["recovered"] is False
    assert (await ws.recv_type("event"))["data"]["v"] == "together"


async def test_catch_up_after_a_killed_pubsub_connection_keeps_order_and_exactly_once(
    instance: Instance, private_redis: PrivateRedis
):
    a, b = await instance(private_redis.url), await instance(private_redis.url)
    ws = await open_ws(b, "/api/v1/ws?channel=left,right")
    admin = aioredis.Redis(port=private_redis.port)
    await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    bus = a.app[BUS]
    plan = [["left"], ["right"], ["left", "right"], ["right", "left"], ["left"]]
    for i, channels in enumerate(plan):
        await bus.publish(channels, "event", {"i": i})
    await bus.publish(["right"], "event", {"i": "fence"})
    got = [(await ws.recv_type("event"))["i"] for _ in range(len(plan) + 1)]
    assert got == [0, 1, 2, 3, 4, "fence"]
    await admin.aclose()


async def test_presence_comes_back_after_redis_restarts_empty(
    instance: Instance, private_redis: PrivateRedis
):
    a, b = await instance(private_redis.url), await instance(private_redis.url)
    await open_ws(a, "/ws/lobby?user_id=alice&username=Alice")

    async def listed_on_b() -> bool:
        body = await (await b.get("/api/v1/rooms/lobby/connections")).json()
        return [u["user_id"] for u in body["users"]] == ["alice"]

    await until(listed_on_b)
    private_redis.kill()
    await until(lambda: _down(b))
    assert not await listed_on_b()  # b alone cannot see a's members
    private_redis.start()
    await until(lambda: _up(a))
    await until(listed_on_b)
