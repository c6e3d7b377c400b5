"""The MQTT bridge end to end: a device publishes to the real broker, the server stores the
readings (SQLite and PostgreSQL), publishes their live events, raises anomalies, and
refuses bad messages alone."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.keys import MQTT, SERVICES
from server.mqtt_topics import broker_address
from tests.conftest import WS, eventually, make_config, open_ws
from tests.ingest.conftest import Topics, forget_session, publish

# Every test here runs on SQLite and on PostgreSQL (skipped loudly when PostgreSQL is down).
from tests.storage.conftest import Opener, backend, open_db, pg_server_url  # noqa: F401


@pytest.fixture
async def server(
    aiohttp_client: Any,
    tmp_path: Path,
    open_db: Opener,  # noqa: F811
    shared_broker: str,
    mqtt_settings: dict[str, Any],
) -> Any:
    settings = {**mqtt_settings, "url": shared_broker}
    config = make_config(tmp_path, {"database": {"url": open_db.url}, "mqtt": settings})
    client = await aiohttp_client(create_app(config))
    await eventually(lambda: client.app[MQTT].state == "connected", timeout=10)
    yield client
    await client.close()  # the bridge first: a session taken over would log a disconnect
    await forget_session(shared_broker, settings["client_id"])


async def add_sensor(client: TestClient, thresholds: dict[str, Any] | None = None) -> int:
    storage = client.app[SERVICES].storage
    sql = "INSERT INTO sensors (type, thresholds) VALUES (?, ?) RETURNING id"
    return int(await storage.fetchval(sql, "temperature", thresholds or {}))


async def stored(client: TestClient) -> list[tuple[int, str, float]]:
    rows = await client.app[SERVICES].storage.fetch("SELECT * FROM reading_values")
    return sorted((r["sensor_id"], r["metric"], r["value"]) for r in rows)


async def subscribe(client: TestClient, channel: str) -> WS:
    ws = await open_ws(client)
    await ws.send({"type": "subscribe", "channel": channel})
    await ws.recv_type("subscribed")
    return ws


def readings_of(frame: dict[str, Any]) -> tuple[int, dict[str, float]]:
    assert frame["type"] == "entity_event", frame
    assert frame["entity_type"] == "sensor"
    assert frame["event_type"] == "reading"
    return frame["data"]["sensor_id"], frame["data"]["values"]


async def test_single_flat_and_batch_payloads_are_stored_and_published(
    server: TestClient, shared_broker: str, topics: Topics
) -> None:
    sid = await add_sensor(server)
    ws = await subscribe(server, f"readings:{sid}")
    await publish(
        shared_broker,
        [
            (topics.sensor(sid), b'{"values": {"temperature": 21.5}}'),
            (topics.sensor(sid), b'{"temperature": 22.0, "humidity": 40}'),
            (
                topics.sensor(sid),
                orjson.dumps([{"values": {"temperature": 23.0}}, {"temperature": 24.0}]),
            ),
            # No {sensor_id} in this pattern: the payload names the sensor.
            (f"{topics.prefix}/any", orjson.dumps({"sensor_id": sid, "pressure": 1013})),
        ],
    )
    got = [readings_of(await ws.recv()) for _ in range(5)]
    assert got == [
        (sid, {"temperature": 21.5}),
        (sid, {"temperature": 22.0, "humidity": 40.0}),
        (sid, {"temperature": 23.0}),
        (sid, {"temperature": 24.0}),
        (sid, {"pressure": 1013.0}),
    ]
    assert await stored(server) == sorted(
        [
            (sid, "temperature", 21.5),
            (sid, "temperature", 22.0),
            (sid, "humidity", 40.0),
            (sid, "temperature", 23.0),
            (sid, "temperature", 24.0),
            (sid, "pressure", 1013.0),
        ]
    )
    stats = (await (await server.get("/api/v1/stats")).json())["mqtt"]
    assert (stats["received"], stats["accepted"], stats["readings"], stats["rejected"]) == (
        4,
        4,
        5,
        0,
    )


async def test_a_threshold_breach_raises_an_anomaly(
    server: TestClient, shared_broker: str, topics: Topics
) -> None:
    sid = await add_sensor(server, {"temperature": {"min": 0, "max": 30}})
    ws = await subscribe(server, "anomalies")
    await publish(shared_broker, [(topics.sensor(sid), b'{"temperature": 45.5}')])
    frame = await ws.recv_type("entity_event")
    assert (frame["entity_type"], frame["event_type"]) == ("anomaly", "anomaly_detected")
    assert {k: frame["data"][k] for k in ("sensor_id", "metric", "value", "max")} == {
        "sensor_id": sid,
        "metric": "temperature",
        "value": 45.5,
        "max": 30,
    }
    listed = await (await server.get(f"/api/v1/anomalies?sensor_id={sid}")).json()
    assert [(a["metric"], a["value"]) for a in listed["items"]] == [("temperature", 45.5)]


async def test_bad_messages_are_refused_alone_counted_and_dead_lettered(
    server: TestClient, shared_broker: str, topics: Topics, caplog: pytest.LogCaptureFixture
) -> None:
    sid = await add_sensor(server)
    address = broker_address(shared_broker)
    async with aiomqtt.Client(address.host, address.port) as watcher:
        await watcher.subscribe(topics.dead, qos=1)
        with caplog.at_level(logging.WARNING, logger="server.ingest.mqtt"):
            await publish(
                shared_broker,
                [
                    (topics.sensor(sid), b'{"temperature": 1}'),
                    (topics.sensor(sid), b"not json"),
                    (topics.sensor(sid), b"{broken"),
                    (topics.sensor(sid), b'{"values": {"temperature": "hot"}}'),
                    (topics.sensor(999_999), b'{"temperature": 3}'),
                    (topics.sensor("abc"), b'{"temperature": 4}'),
                    (topics.sensor(sid), b'{"sensor_id": 5, "temperature": 5}'),
                    (topics.sensor(sid), b'{"temperature": 2}'),
                ],
            )
            letters = []
            async with asyncio.timeout(10):
                async for message in watcher.messages:
                    assert isinstance(message.payload, bytes)
                    letters.append(orjson.loads(message.payload))
                    if len(letters) == 6:
                        break
    # The good messages on either side of the bad ones are stored. (Counted once handled:
    # `received` counts a batch before it is stored.)
    stats_of = server.app[MQTT].stats
    await eventually(lambda: stats_of.accepted + stats_of.rejected == 8, timeout=10)
    assert await stored(server) == [(sid, "temperature", 1.0), (sid, "temperature", 2.0)]
    by_payload = {letter["payload"]: letter for letter in letters}
    assert {p: letter["cause"] for p, letter in by_payload.items()} == {
        "not json": "not_json",
        "{broken": "not_json",
        '{"values": {"temperature": "hot"}}': "bad_shape",
        '{"temperature": 3}': "unknown_sensor",
        '{"temperature": 4}': "bad_topic",
        '{"sensor_id": 5, "temperature": 5}': "bad_shape",
    }
    assert by_payload['{"temperature": 3}']["details"] == {
        "0": {"sensor_id": ["Unknown sensor 999999."]}
    }
    assert by_payload['{"values": {"temperature": "hot"}}']["details"] == {
        "values": {"temperature": ["Not a finite number."]}
    }
    assert by_payload['{"temperature": 4}']["topic"] == topics.sensor("abc")
    stats = (await (await server.get("/api/v1/stats")).json())["mqtt"]
    assert stats["rejected"] == 6
    assert stats["accepted"] == 2
    assert stats["rejected_by_cause"] == {
        "bad_topic": 1,
        "not_json": 2,
        "bad_shape": 2,
        "too_large": 0,
        "unknown_sensor": 1,
    }
    # Logged once per cause (within a minute), with the topic.
    lines = [r.getMessage() for r in caplog.records if "refused a message" in r.getMessage()]
    assert len(lines) == 4, lines
    assert any(topics.sensor(sid) in line and "(not_json)" in line for line in lines)
    health = await (await server.get("/health")).json()
    assert health["checks"]["mqtt"]["status"] == "ok"
