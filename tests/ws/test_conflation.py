"""subscribe max_rate: at most max_rate events per entity per second, the newest wins."""

from __future__ import annotations

import asyncio
from typing import Any

from server.keys import BUS, HUB
from tests.api.test_sse import open_sse
from tests.conftest import WS, open_ws


def reading(sensor_id: int, value: int) -> dict[str, Any]:
    return {
        "entity_type": "sensor",
        "event_type": "reading",
        "entity_id": sensor_id,
        "data": {"sensor_id": sensor_id, "values": {"t": value}},
    }


async def _until_pong(ws: WS) -> list[dict[str, Any]]:
    """Frames up to the pong of a ping sent now: a fence instead of a sleep."""
    await ws.send({"type": "ping", "id": "fence"})
    frames = []
    while (frame := await ws.recv())["type"] != "pong":
        frames.append(frame)
    return frames


async def _conflated_socket(client, channel: str, max_rate: float) -> WS:
    ws = await open_ws(client, "/api/v1/ws?channel=general")
    await ws.send({"type": "subscribe", "channel": channel, "max_rate": max_rate})
    assert (await ws.recv_type("subscribed"))["channel"] == channel
    return ws


async def _receive_until(ws: WS, done: Any) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    while not got or not done(got):
        got.append(await ws.recv())
    return got


async def test_burst_is_conflated_to_max_rate_and_the_last_value_wins(client):
    ws = await _conflated_socket(client, "readings", 10)
    hub, bus = client.app[HUB], client.app[BUS]
    started = hub.clock()
    for i in range(1000):
        await bus.publish(["readings"], "entity_event", reading(1, i))
        await asyncio.sleep(0)  # full speed, but let the loop write as it would serve
    got = await _receive_until(ws, lambda g: g[-1]["data"]["values"]["t"] == 999)
    elapsed = hub.clock() - started
    got += await _until_pong(ws)
    values = [f["data"]["values"]["t"] for f in got]
    assert values[-1] == 999
    assert values == sorted(values)
    # At most 10/s for the one sensor (plus the first, sent at once, and the last slot).
    assert len(values) <= 10 * elapsed + 2, (len(values), elapsed)


async def test_two_sensors_on_one_channel_are_conflated_separately(client):
    ws = await _conflated_socket(client, "readings", 5)
    hub, bus = client.app[HUB], client.app[BUS]
    started = hub.clock()
    for i in range(300):
        await bus.publish(["readings"], "entity_event", reading(1 + i % 2, i))
    last: dict[int, int] = {}

    def both_last(got: list[dict[str, Any]]) -> bool:
        frame = got[-1]
        last[frame["entity_id"]] = frame["data"]["values"]["t"]
        return last == {1: 298, 2: 299}

    got = await _receive_until(ws, both_last)
    elapsed = hub.clock() - started
    got += await _until_pong(ws)
    assert last == {1: 298, 2: 299}
    for sensor in (1, 2):
        values = [f["data"]["values"]["t"] for f in got if f["entity_id"] == sensor]
        assert values == sorted(values)
        assert values[0] == sensor - 1
        # The first went at once; then at most 5/s for each sensor on its own.
        assert len(values) <= 5 * elapsed + 2, (sensor, len(values), elapsed)


async def test_events_not_per_entity_are_never_dropped(client):
    ws = await _conflated_socket(client, "mixed", 1)
    hub, bus = client.app[HUB], client.app[BUS]
    started = hub.clock()
    for i in range(50):
        await bus.publish(["mixed"], "entity_event", reading(7, i))
        await bus.publish(["mixed"], "system_event", {"level": "info", "message": str(i)})
    got = await _receive_until(
        ws, lambda g: g[-1]["type"] == "entity_event" and g[-1]["data"]["values"]["t"] == 49
    )
    elapsed = hub.clock() - started
    got += await _until_pong(ws)
    assert [int(f["message"]) for f in got if f["type"] == "system_event"] == list(range(50))
    readings = [f["data"]["values"]["t"] for f in got if f["type"] == "entity_event"]
    assert readings[0] == 0
    assert readings[-1] == 49
    assert len(readings) <= elapsed + 2


async def test_since_with_max_rate_recovers_the_newest_per_entity(client):
    bus = client.app[BUS]
    position = await bus.position("readings")
    for i in range(20):
        await bus.publish(["readings"], "entity_event", reading(1 + i % 2, i))
    await bus.publish(["readings"], "system_event", {"level": "info", "message": "x"})
    ws = await open_ws(client, "/api/v1/ws?channel=general")
    await ws.send(
        {
            "type": "subscribe",
            "channel": "readings",
            "max_rate": 1,
            "since": {"offset": position.offset, "epoch": position.epoch},
        }
    )
    assert (await ws.recv_type("subscribed"))["recovered"] is True
    got = await _until_pong(ws)
    assert [(f["type"], f.get("entity_id")) for f in got] == [
        ("entity_event", 1),
        ("entity_event", 2),
        ("system_event", None),
    ]
    assert [f["data"]["values"]["t"] for f in got[:2]] == [18, 19]


async def test_max_rate_on_sse_and_unsubscribe_of_a_conflated_channel(client):
    stream, _ = await open_sse(client, "channel=readings&max_rate=2")
    bus, hub = client.app[BUS], client.app[HUB]
    started = hub.clock()
    for i in range(100):
        await bus.publish(["readings"], "entity_event", reading(3, i))
    values = [(await stream.event())["json"]["data"]["values"]["t"]]
    while values[-1] != 99:
        values.append((await stream.event())["json"]["data"]["values"]["t"])
    assert values[0] == 0
    assert values == sorted(values)
    assert len(values) <= 2 * (hub.clock() - started) + 2
    assert len(hub.subscribers("readings")) == 1
    ws = await _conflated_socket(client, "readings", 2)
    await ws.send({"type": "unsubscribe", "channel": "readings"})
    assert (await ws.recv_type("unsubscribed"))["channel"] == "readings"
    assert len(hub.subscribers("readings")) == 1


async def test_bad_max_rate_is_an_error_frame(client):
    ws = await open_ws(client)
    await ws.send({"type": "subscribe", "id": 1, "channel": "readings", "max_rate": 0})
    error = await ws.recv_type("error")
    assert error["id"] == 1
    assert error["code"] == "bad_request"
    assert "max_rate" in error["details"]
