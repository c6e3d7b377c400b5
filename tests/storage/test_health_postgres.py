"""The app on PostgreSQL losing its database: 503 while it is gone, back on its own after.

The shared server is never stopped: connections are killed with pg_terminate_backend
(matched by this test's application_name), and "unreachable" is a TCP proxy in front of
the server that the test stops and starts.
"""

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

import server.storage.postgres as pg_backend
from server.api.middleware import json_errors
from server.app import create_app
from server.keys import AUTH, SERVICES
from tests.conftest import auth_header, make_config, open_ws
from tests.storage.conftest import PgSchema
from tests.storage.tcp_proxy import TcpProxy

MakeClient = Callable[[str], Awaitable[TestClient]]


def unavailable(resp: Any) -> dict[str, Any]:
    """The 503 body of a request that needed the database (request_id: the response's)."""
    return {
        "error": {
            "code": "unavailable",
            "message": "database unavailable",
            "details": None,
            "request_id": resp.headers["X-Request-ID"],
        }
    }


async def probe(request: web.Request) -> web.Response:
    """A handler that needs the database, wrapped like every HTTP handler of the app."""
    value = await request.app[SERVICES].storage.fetchval("SELECT 1")
    return web.json_response({"value": value})


@pytest.fixture
def make_client(aiohttp_client: Any, tmp_path: Path) -> MakeClient:
    async def make(url: str) -> TestClient:
        config = make_config(tmp_path, {"database": {"url": url, "pool_min": 2, "pool_max": 4}})
        app = create_app(config)
        app.router.add_get("/test/probe", json_errors(probe))
        return await aiohttp_client(app)

    return make


@pytest.fixture
async def proxy(pg_schema: PgSchema):
    target = urlsplit(pg_schema.server_url)
    tcp = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)
    await tcp.start()
    yield tcp
    await tcp.stop()


def through(url: str, port: int) -> str:
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    netloc = f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def health(client: TestClient) -> tuple[int, dict[str, Any]]:
    resp = await client.get("/health")
    assert resp.status in (200, 503), await resp.text()
    body = await resp.json()
    if resp.status == 503:
        assert body["status"] == "degraded"
        assert body["checks"]["database"]["status"] == "down"
        assert body["checks"]["database"]["error"]
        assert body["checks"]["bus"]["status"] == "ok"
    else:
        assert body["status"] == "healthy"
    return resp.status, body


async def until_healthy(client: TestClient, timeout: float = 15.0) -> list[int]:
    """GET /health until it is 200 (a deadline, not a count of tries that a slow machine
    uses up sooner); the statuses seen on the way."""
    seen: list[int] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        status, _ = await health(client)
        seen.append(status)
        if status == 200:
            return seen
        await asyncio.sleep(0.1)
    raise AssertionError(f"/health never recovered within {timeout}s: {seen}")


async def test_app_migrates_into_its_own_schema_and_is_healthy(
    make_client: MakeClient, pg_schema: PgSchema
):
    client = await make_client(pg_schema.url)

    status, body = await health(client)

    assert status == 200
    assert body["checks"]["database"]["status"] == "ok"
    conn = await pg_schema.admin()
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
            pg_schema.name,
        )
    finally:
        await conn.close()
    assert {"sensors", "readings", "schema_migrations"} <= {r["table_name"] for r in tables}


async def test_killed_backends_recover_without_a_restart(
    make_client: MakeClient, pg_schema: PgSchema
):
    client = await make_client(pg_schema.url)
    assert (await health(client))[0] == 200
    opened = await pg_schema.backends()  # what the pool holds now, not what pool_min says
    assert opened >= 1

    assert await pg_schema.terminate_backends() == opened

    # 200 at once (ping retried on a fresh connection) or 503 degraded for a moment;
    # never a 500, and healthy again with the same app.
    await until_healthy(client)
    # Each killed connection may fail one statement before the pool replaces it, in
    # whatever order the pool hands them out: at most `opened` 503s, in the error shape.
    statuses = []
    for _ in range(opened + 3):
        resp = await client.get("/test/probe")
        statuses.append(resp.status)
        assert await resp.json() == ({"value": 1} if resp.status == 200 else unavailable(resp))
    assert statuses.count(503) <= opened, statuses
    assert statuses.count(200) >= 3, statuses
    assert (await health(client))[0] == 200


async def test_unreachable_database_is_503_degraded_then_healthy_when_back(
    make_client: MakeClient, pg_schema: PgSchema, proxy: TcpProxy
):
    client = await make_client(through(pg_schema.url, proxy.port))
    assert (await health(client))[0] == 200

    await proxy.stop()

    status, _ = await health(client)
    assert status == 503
    resp = await client.get("/test/probe")
    assert resp.status == 503
    assert await resp.json() == unavailable(resp)
    assert (await client.get("/api/v1/")).status == 200  # the server itself is fine

    await proxy.start()

    await until_healthy(client)
    assert (await client.get("/test/probe")).status == 200


async def test_database_that_stops_answering_is_503_within_the_ping_timeout(
    make_client: MakeClient, pg_schema: PgSchema, proxy: TcpProxy, monkeypatch: Any
):
    monkeypatch.setattr(pg_backend, "PING_TIMEOUT", 0.5)
    client = await make_client(through(pg_schema.url, proxy.port))
    assert (await health(client))[0] == 200

    proxy.pause()

    status, body = await health(client)
    assert status == 503
    assert body["checks"]["database"]["error"] == "database did not answer within 0.5s"

    proxy.resume()

    await until_healthy(client)


async def test_outage_under_a_running_server_on_shipped_paths_then_recovery(
    make_client: MakeClient, pg_schema: PgSchema, proxy: TcpProxy
):
    """PostgreSQL cut (the proxy resets every connection and refuses new ones) under a
    running server: shipped REST routes, WS requests and chat joins, not a test route."""
    client = await make_client(through(pg_schema.url, proxy.port))
    tok = client.app[AUTH].mint("ops", "admin")
    native = await open_ws(client, f"/api/v1/ws?token={tok}")
    list_sensors = {"type": "request", "id": 1, "resource": "sensors", "action": "list"}
    assert (await native.request({**list_sensors, "payload": {}}))["type"] == "response"

    await proxy.stop()

    # A shipped REST route: 503 in the one error shape.
    resp = await client.get("/api/v1/sensors", headers=auth_header(tok))
    assert resp.status == 503
    assert await resp.json() == unavailable(resp)
    # A WebSocket `request` on a socket opened before the outage: its error frame, and
    # the socket stays usable. SPEC §4's frame codes have no `unavailable`: `internal`,
    # with the same message as REST.
    reply = await native.request({**list_sensors, "id": 2, "payload": {}})
    assert {k: reply[k] for k in ("type", "id", "code", "message")} == {
        "type": "error", "id": 2, "code": "internal", "message": "database unavailable",
    }  # fmt: skip
    await native.nothing()
    # A chat join: the room works, and says its history could not be read.
    joined = await open_ws(client, "/ws/outage?user_id=1&username=Ana", handshake=False)
    await joined.recv_type("connection")
    await joined.recv_type("connected")
    assert (await joined.recv_type("subscribed"))["channel"] == "chat:outage"
    error = await joined.recv_type("error")
    assert (error["code"], error["message"]) == ("internal", "chat history is unavailable now")
    await joined.nothing()
    assert (await client.get("/api/v1/")).status == 200  # the server itself is fine

    await proxy.start()

    await until_healthy(client)
    resp = await client.get("/api/v1/sensors", headers=auth_header(tok))
    assert (resp.status, await resp.json()) == (200, {"items": [], "next_cursor": None})
    reply = await native.request({**list_sensors, "id": 3, "payload": {}})
    assert (reply["type"], reply["id"], reply["data"]) == (
        "response", 3, {"items": [], "next_cursor": None}
    )  # fmt: skip
    await joined.send({"type": "message", "content": "back"})
    assert (await joined.recv_type("message_sent"))["data"]["content"] == "back"
    late = await open_ws(client, "/ws/outage?user_id=2&username=Bob")
    history = await late.recv_type("message")
    assert (history["data"]["content"], history["history"]) == ("back", True)
    await late.nothing()  # no error frame this time
