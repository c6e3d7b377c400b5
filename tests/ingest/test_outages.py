"""The bridge when things go away: its broker (a private mosquitto, killed and restarted by
PID) and the server itself (a crash between receipt and storage: QoS 1 redelivers)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.config import MqttConfig
from server.ingest.mqtt import MqttBridge
from server.keys import AUTH, MQTT, SERVICES
from server.services.readings import Reading, ReadingService
from tests.conftest import eventually, make_config
from tests.ingest.conftest import PrivateBroker, Topics, publish
from tests.ingest.test_bridge import add_sensor, stored
from tests.storage.conftest import PgSchema, pg_schema, pg_server_url  # noqa: F401
from tests.storage.tcp_proxy import TcpProxy
from tests.storage.test_health_postgres import through


@pytest.fixture
async def server(
    aiohttp_client: Any,
    tmp_path: Path,
    private_broker: PrivateBroker,
    mqtt_settings: dict[str, Any],
) -> TestClient:
    settings = {**mqtt_settings, "url": private_broker.url}
    client = await aiohttp_client(create_app(make_config(tmp_path, {"mqtt": settings})))
    await eventually(lambda: client.app[MQTT].state == "connected", timeout=10)
    return client


async def health(client: TestClient) -> tuple[int, dict[str, Any]]:
    response = await client.get("/health")
    return response.status, await response.json()


async def test_broker_lost_degrades_health_then_reconnects_and_resubscribes(
    server: TestClient, private_broker: PrivateBroker, topics: Topics
) -> None:
    sid = await add_sensor(server)
    bridge = server.app[MQTT]
    private_broker.kill()
    await eventually(lambda: bridge.state == "down", timeout=10)
    status, body = await health(server)
    assert status == 200
    assert body["status"] == "degraded"
    assert body["checks"]["mqtt"]["status"] == "down"
    assert body["checks"]["database"]["status"] == "ok"
    # The rest of the server is unaffected.
    response = await server.post(
        "/api/v1/readings",
        json={"sensor_id": sid, "values": {"t": 1}},
        headers={"Authorization": f"Bearer {server.app[AUTH].mint('tester', 'service')}"},
    )
    assert response.status == 201

    await private_broker.start()
    await eventually(lambda: bridge.state == "connected", timeout=15)
    status, body = await health(server)
    assert status == 200
    assert body["checks"]["mqtt"]["status"] == "ok"
    # Resubscribed: a message published now is stored.
    await publish(private_broker.url, [(topics.sensor(sid), b'{"t": 2}')])
    await eventually(lambda: bridge.stats.accepted == 1, timeout=10)
    assert await stored(server) == [(sid, "t", 1.0), (sid, "t", 2.0)]
    assert bridge.stats.reconnects >= 1


class Stalled(ReadingService):
    """Receives, then never finishes storing: the process dies before the commit."""

    def __init__(self, real: ReadingService) -> None:
        super().__init__(real.storage, real.bus)
        self.entered = 0

    async def ingest_each(self, bodies: list[list[Reading]]) -> list[dict[str, Any] | None]:
        self.entered += len(bodies)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_crash_between_receipt_and_storage_loses_nothing(
    aiohttp_client: Any, tmp_path: Path, private_broker: PrivateBroker, topics: Topics
) -> None:
    settings = {
        "enabled": False,
        "url": private_broker.url,
        "client_id": topics.client_id("crash"),
        "topics": [topics.pattern],
    }
    client = await aiohttp_client(create_app(make_config(tmp_path, {"mqtt": settings})))
    sid = await add_sensor(client)
    config = MqttConfig(**{**settings, "enabled": True})
    real = client.app[SERVICES].readings

    doomed = MqttBridge(config, Stalled(real), config.client_id)
    doomed.start()
    await eventually(lambda: doomed.state == "connected", timeout=10)
    await publish(
        private_broker.url, [(topics.sensor(sid), f'{{"n": {n}}}'.encode()) for n in range(3)]
    )
    stalled = doomed.readings
    assert isinstance(stalled, Stalled)
    # The first batch is being stored (the rest wait behind it, received or not).
    await eventually(lambda: stalled.entered >= 1, timeout=10)
    # The crash: the task dies mid-store; nothing was acknowledged to the broker.
    assert doomed._task is not None
    doomed._task.cancel()
    await asyncio.gather(doomed._task, return_exceptions=True)
    assert await stored(client) == []

    # The restarted server, same client id: the broker redelivers, the readings are stored.
    revived = MqttBridge(config, real, config.client_id)
    revived.start()
    try:
        await eventually(lambda: revived.stats.accepted == 3, timeout=15)
        assert await stored(client) == [(sid, "n", 0.0), (sid, "n", 1.0), (sid, "n", 2.0)]
    finally:
        await revived.stop(5)
    assert revived.state == "stopped"


async def test_database_away_holds_the_batch_unacknowledged_then_stores_it(
    aiohttp_client: Any,
    tmp_path: Path,
    pg_schema: PgSchema,  # noqa: F811
    private_broker: PrivateBroker,
    mqtt_settings: dict[str, Any],
    topics: Topics,
    caplog: pytest.LogCaptureFixture,
) -> None:
    target = urlsplit(pg_schema.server_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)
    await proxy.start()
    try:
        url = through(pg_schema.url, proxy.port)
        settings = {**mqtt_settings, "url": private_broker.url}
        config = make_config(tmp_path, {"database": {"url": url}, "mqtt": settings})
        client = await aiohttp_client(create_app(config))
        bridge = client.app[MQTT]
        await eventually(lambda: bridge.state == "connected", timeout=10)
        sid = await add_sensor(client)

        await proxy.stop()
        with caplog.at_level(logging.WARNING, logger="server.ingest.mqtt"):
            await publish(private_broker.url, [(topics.sensor(sid), b'{"t": 7}')])
            await eventually(lambda: "holding the batch" in caplog.text, timeout=15)
        assert (bridge.stats.accepted, bridge.stats.rejected) == (0, 0)
        await proxy.start()
        await eventually(lambda: bridge.stats.accepted == 1, timeout=20)
        assert await stored(client) == [(sid, "t", 7.0)]
        assert caplog.text.count("holding the batch") == 1  # said once, not per retry
    finally:
        await proxy.stop()
