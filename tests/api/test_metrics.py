"""GET /metrics: names and labels of SPEC §8, values that move with real traffic."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from server.api.middleware import REST_LIMITER
from server.keys import BUS, HUB, METRICS
from tests.conftest import auth_header, eventually, open_ws
from tests.ws.link import RawSocket


async def scrape(client, headers=None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = await client.get("/metrics", headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    out = {}
    for family in text_string_to_metric_families(await resp.text()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metric_names_and_label_sets_are_the_spec_ones(client):
    s = await scrape(client)
    names = {name for name, _ in s}
    for name in (
        "sensorcast_connections",
        "sensorcast_subscriptions",
        "sensorcast_slow_consumers_total",
        "sensorcast_rate_limited_total",
        "sensorcast_mqtt_messages_total",
        "process_resident_memory_bytes",
        "python_info",
    ):
        assert name in names, name
    assert value(s, "sensorcast_connections", transport="ws") == 0
    assert ("sensorcast_rate_limited_total", (("transport", "rest"),)) in s
    assert ("sensorcast_rate_limited_total", (("transport", "ws"),)) in s
    assert ("sensorcast_mqtt_messages_total", (("result", "accepted"),)) in s
    # The database check runs at start, as a job.
    metrics = client.app[METRICS]
    await eventually(lambda: metrics.dependency_up.labels("database")._value.get() == 1)
    s = await scrape(client)
    assert value(s, "sensorcast_dependency_up", dependency="database") == 1


async def test_connections_subscriptions_publications_deliveries_move(client, token):
    a = await open_ws(client, "/api/v1/ws?channel=general&channel=readings:1")
    b = await open_ws(client)
    sse = await client.get("/api/v1/sse?channel=general")
    assert await sse.content.readuntil(b"\n\n") == b"retry: 3000\n\n"
    assert b"event: subscribed" in await sse.content.readuntil(b"\n\n")
    s = await scrape(client)
    assert value(s, "sensorcast_connections", transport="sse") == 1
    sse.close()
    await eventually(lambda: client.app[HUB].transports["sse"] == 0)
    s = await scrape(client)
    assert value(s, "sensorcast_connections", transport="sse") == 0
    assert value(s, "sensorcast_connections", transport="ws") == 2
    assert value(s, "sensorcast_subscriptions") == 3
    tok = token("service")
    for i in range(3):
        resp = await client.post("/api/v1/events/general", json={"i": i}, headers=auth_header(tok))
        assert resp.status == 202
    for ws in (a, b):
        for _ in range(3):
            await ws.recv_type("event")
    # A channel of no known namespace is counted as `other`: labels stay bounded.
    await client.app[BUS].publish(["room-42"], "event", {"data": 1})
    await client.app[BUS].publish(["readings:1"], "event", {"data": 2})
    await a.recv_type("event")
    s = await scrape(client)
    assert value(s, "sensorcast_publications_total", namespace="general") == 3
    assert value(s, "sensorcast_deliveries_total", namespace="general") == 6
    assert value(s, "sensorcast_publications_total", namespace="other") == 1
    assert value(s, "sensorcast_deliveries_total", namespace="other") == 0
    assert value(s, "sensorcast_deliveries_total", namespace="readings") == 1
    assert value(s, "sensorcast_publish_latency_seconds_count") == 5
    assert not any("room-42" in str(labels) for _, labels in s)
    await a.ws.close()
    await b.ws.close()
    await eventually(lambda: not client.app[HUB].clients)
    s = await scrape(client)
    assert value(s, "sensorcast_connections", transport="ws") == 0
    assert value(s, "sensorcast_subscriptions") == 0


async def test_a_batch_counts_every_publication_and_delivery(client):
    ws = await open_ws(client, "/api/v1/ws?channel=readings:7")
    bus = client.app[BUS]
    await bus.publish_many([(["readings:7"], "event", {"data": i}) for i in range(4)])
    for _ in range(4):
        await ws.recv_type("event")
    s = await scrape(client)
    assert value(s, "sensorcast_publications_total", namespace="readings") == 4
    assert value(s, "sensorcast_deliveries_total", namespace="readings") == 4
    # One latency observation per batch, not per publication.
    assert value(s, "sensorcast_publish_latency_seconds_count") == 1


async def test_request_histogram_is_by_route_pattern(client, token):
    for sensor_id in (1, 2, 3):
        resp = await client.get(f"/api/v1/sensors/{sensor_id}")
        assert resp.status == 404
    assert (await client.get("/health")).status == 200
    s = await scrape(client)
    key = dict(method="GET", route="/api/v1/sensors/{id}", status="404")
    assert value(s, "sensorcast_http_request_duration_seconds_count", **key) == 3
    assert (
        value(
            s,
            "sensorcast_http_request_duration_seconds_count",
            **{**key, "route": "/health", "status": "200"},
        )
        == 1
    )
    assert not any("/api/v1/sensors/1" in dict(labels).get("route", "") for _, labels in s)


async def test_rate_limit_hits_are_counted_per_transport(make_client):
    client = await make_client(
        {"server": {"rate_limit": 1, "rate_burst": 2}, "ws": {"rate_limit": 1, "rate_burst": 1}}
    )
    statuses = [(await client.get("/api/v1/")).status for _ in range(4)]
    assert statuses.count(429) >= 2
    ws = await open_ws(client)
    for i in range(3):
        await ws.send({"type": "ping", "id": i})
    replies = [await ws.recv() for _ in range(3)]
    refused = sum(r["type"] == "error" for r in replies)
    assert refused >= 1
    # Let the scrape itself through.
    client.app[REST_LIMITER].rate = 1e9
    s = await scrape(client)
    assert value(s, "sensorcast_rate_limited_total", transport="rest") == statuses.count(429)
    assert value(s, "sensorcast_rate_limited_total", transport="ws") == refused


async def test_slow_consumer_drops_are_counted(make_client):
    client = await make_client({"ws": {"max_queue_bytes": 64 * 1024, "max_lag": 1}})
    stalled = await RawSocket.open(client.host, client.port, "/api/v1/ws?channel=firehose")
    hub = client.app[HUB]
    await eventually(lambda: len(hub.channels.get("firehose", ())) == 1)
    blob = "y" * 8000
    for i in range(400):
        await client.app[BUS].publish(["firehose"], "event", {"data": {"i": i, "blob": blob}})
        if hub.stats.dropped_slow_consumers:
            break
    # Judged by lag: dropped once it stayed behind for ws.max_lag without draining.
    await eventually(lambda: hub.stats.dropped_slow_consumers == 1, timeout=10)
    stalled.close()
    s = await scrape(client)
    assert value(s, "sensorcast_slow_consumers_total") == 1


async def test_metrics_token_is_required_when_set(make_client):
    client = await make_client({"metrics": {"token": "scrape-secret-0123456789"}})
    resp = await client.get("/metrics")
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "unauthorized"
    wrong = await client.get("/metrics", headers=auth_header("nope"))
    assert wrong.status == 401
    await scrape(client, auth_header("scrape-secret-0123456789"))


async def test_mqtt_counters_come_from_the_bridge_at_scrape_time(client):
    s = await scrape(client)
    assert value(s, "sensorcast_mqtt_messages_total", result="accepted") == 0
    client.app[METRICS].mqtt = lambda: (5, 2)
    s = await scrape(client)
    assert value(s, "sensorcast_mqtt_messages_total", result="accepted") == 5
    assert value(s, "sensorcast_mqtt_messages_total", result="rejected") == 2


async def test_conflated_deliveries_count_too(client):
    ws = await open_ws(client)
    await ws.send({"type": "subscribe", "channel": "readings:8", "max_rate": 5})
    await ws.recv_type("subscribed")
    bus = client.app[BUS]
    # A non-entity event goes through at once; the entity events are conflated to the newest.
    await bus.publish(["readings:8"], "event", {"data": 0})
    assert (await ws.recv_type("event"))["data"] == 0
    s = await scrape(client)
    assert value(s, "sensorcast_deliveries_total", namespace="readings") == 1
