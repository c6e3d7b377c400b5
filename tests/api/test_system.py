"""Service endpoints: info, health, the error shape, events, test-event, stats, OpenAPI, auth."""

import re
from collections.abc import Callable
from typing import Any

import jsonschema_rs
import jwt
import pytest
from aiohttp.test_utils import TestClient
from schemathesis.specs.openapi.definitions import OPENAPI_30

from server import __version__
from server.keys import AUTH, SERVICES
from tests.conftest import WS, Connect, auth_header, open_ws

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
Mint = Callable[..., str]


async def error_of(resp: Any, status: int, code: str) -> dict[str, Any]:
    """Assert the one error shape with this status and code; return the error object."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert list(body) == ["error"]
    error = body["error"]
    assert set(error) == {"code", "message", "details", "request_id"}
    # The error names its request, as the response header does (SPEC §8).
    assert error["request_id"] == resp.headers["X-Request-ID"]
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert error["message"]
    return error


async def publish(client: TestClient, tok: str, event: Any, channel: str = "general") -> Any:
    return await client.post(f"/api/v1/events/{channel}", json=event, headers=auth_header(tok))


# -- info and health ---------------------------------------------------------------------------


async def test_info_names_the_server(client: TestClient):
    resp = await client.get("/api/v1/")

    assert resp.status == 200
    body = await resp.json()
    assert body["name"] == "sensorcast"
    assert body["version"] == __version__
    assert isinstance(body["uptime"], int | float)
    assert body["uptime"] >= 0


@pytest.mark.parametrize("path", ["/health", "/api/v1/health"])
async def test_health_is_healthy_with_a_check_per_dependency(client: TestClient, path: str):
    resp = await client.get(path)

    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "healthy"
    assert set(body["checks"]) == {"database", "bus"}
    assert body["checks"]["database"]["status"] == "ok"
    assert body["checks"]["database"]["latency_ms"] >= 0
    assert body["checks"]["bus"] == {"status": "ok", "backend": "local"}


@pytest.mark.parametrize("path", ["/health", "/api/v1/health"])
async def test_health_is_503_degraded_when_the_database_is_down(client: TestClient, path: str):
    await client.app[SERVICES].storage.close()

    resp = await client.get(path)

    assert resp.status == 503
    body = await resp.json()
    assert body["status"] == "degraded"
    assert body["checks"]["database"]["status"] == "down"
    assert body["checks"]["database"]["error"] == "storage is closed"
    assert body["checks"]["bus"]["status"] == "ok"


# -- the one error shape -----------------------------------------------------------------------


async def test_unknown_route_is_404_not_found(client: TestClient):
    error = await error_of(await client.get("/api/v1/nope"), 404, "not_found")

    assert error["details"] is None


async def test_wrong_method_is_405_with_allow(client: TestClient):
    resp = await client.get("/api/v1/events/general")

    await error_of(resp, 405, "bad_request")
    assert "POST" in resp.headers["Allow"].split(",")


async def test_publish_without_token_is_401(client: TestClient):
    resp = await client.post("/api/v1/events/general", json={"a": 1})

    await error_of(resp, 401, "unauthorized")


async def test_publish_with_user_role_is_403(client: TestClient, token: Mint):
    resp = await publish(client, token(role="user"), {"a": 1})

    await error_of(resp, 403, "forbidden")


async def test_publish_with_device_role_is_403(client: TestClient, token: Mint):
    resp = await publish(client, token(role="device"), {"a": 1})

    await error_of(resp, 403, "forbidden")


@pytest.mark.parametrize("role", ["service", "admin"])
async def test_publish_answers_202_with_position_incrementing_by_one(
    client: TestClient, token: Mint, role: str
):
    tok = token(role=role)

    first = await publish(client, tok, {"n": 1})
    second = await publish(client, tok, {"n": 2})

    assert first.status == 202
    assert second.status == 202
    a, b = await first.json(), await second.json()
    assert set(a) == {"channel", "offset", "epoch"}
    assert a["channel"] == "general"
    assert a["offset"] == 1
    assert b == {"channel": "general", "offset": 2, "epoch": a["epoch"]}
    assert isinstance(a["epoch"], str)
    assert a["epoch"]


async def test_offsets_are_per_channel(client: TestClient, token: Mint):
    tok = token()

    await publish(client, tok, {"n": 1}, channel="general")
    resp = await publish(client, tok, {"n": 1}, channel="sensors:7")

    assert (await resp.json())["offset"] == 1
    assert (await resp.json())["channel"] == "sensors:7"


async def test_publish_with_token_in_query(client: TestClient, connect: Connect, token: Mint):
    ws = await connect()
    resp = await client.post(f"/api/v1/events/general?token={token()}", json={"a": 1})

    assert resp.status == 202
    answer = await resp.json()
    assert answer == {"channel": "general", "offset": 1, "epoch": answer["epoch"]}
    frame = await ws.recv_type("event")
    assert (frame["data"], frame["offset"], frame["epoch"]) == ({"a": 1}, 1, answer["epoch"])


async def test_publish_with_config_api_token(make_client: Callable[..., Any]):
    secret = "billing-0123456789abcdef"
    client = await make_client(
        {"auth": {"api_tokens": [{"name": "billing", "token": secret, "role": "service"}]}}
    )

    ws = await open_ws(client)
    resp = await publish(client, secret, {"a": 1})

    assert resp.status == 202
    answer = await resp.json()
    assert answer == {"channel": "general", "offset": 1, "epoch": answer["epoch"]}
    assert (await ws.recv_type("event"))["data"] == {"a": 1}


async def test_non_json_body_is_400_invalid_json(client: TestClient, token: Mint):
    resp = await client.post(
        "/api/v1/events/general",
        data=b"{not json",
        headers={**auth_header(token()), "Content-Type": "application/json"},
    )

    await error_of(resp, 400, "invalid_json")


async def test_event_body_that_is_an_array_is_422_naming_event(client: TestClient, token: Mint):
    resp = await publish(client, token(), [1, 2])

    error = await error_of(resp, 422, "bad_request")
    assert list(error["details"]) == ["event"]


async def test_test_event_body_that_is_an_array_is_422_like_events(client: TestClient, token: Mint):
    resp = await client.post("/api/v1/ws/test-event", json=[1], headers=auth_header(token()))

    await error_of(resp, 422, "bad_request")


async def test_bad_channel_name_in_path_is_422_naming_channel(client: TestClient, token: Mint):
    resp = await publish(client, token(), {"a": 1}, channel="Bad!Name")

    error = await error_of(resp, 422, "bad_request")
    assert list(error["details"]) == ["channel"]
    assert isinstance(error["details"]["channel"], list)


async def test_body_over_max_body_bytes_is_413_too_large(make_client: Callable[..., Any]):
    client = await make_client({"server": {"max_body_bytes": 2048}})
    tok = client.app[AUTH].mint("tester", "service")

    resp = await publish(client, tok, {"blob": "x" * 4096})

    await error_of(resp, 413, "too_large")


async def test_body_under_max_body_bytes_passes(make_client: Callable[..., Any]):
    client = await make_client({"server": {"max_body_bytes": 2048}})
    tok = client.app[AUTH].mint("tester", "service")

    ws = await open_ws(client)
    resp = await publish(client, tok, {"blob": "x" * 1500})

    assert resp.status == 202
    assert (await resp.json())["offset"] == 1
    assert (await ws.recv_type("event"))["data"] == {"blob": "x" * 1500}  # all of it


# -- what subscribers receive -------------------------------------------------------------------


async def test_plain_object_arrives_as_event_with_data(
    client: TestClient, connect: Connect, token: Mint
):
    ws = await connect()

    resp = await publish(client, token(), {"temp": 21.5, "nested": {"a": [1, 2]}})
    receipt = await resp.json()
    frame = await ws.recv_type("event")

    assert set(frame) == {"type", "channel", "offset", "epoch", "timestamp", "data"}
    assert frame["channel"] == "general"
    assert frame["offset"] == 1
    assert frame["epoch"] == receipt["epoch"]
    assert ISO_UTC.match(frame["timestamp"]), frame["timestamp"]
    assert frame["data"] == {"temp": 21.5, "nested": {"a": [1, 2]}}


async def test_object_with_unknown_type_is_wrapped_as_event_data(
    client: TestClient, connect: Connect, token: Mint
):
    ws = await connect()

    await publish(client, token(), {"type": "connection", "x": 1})
    frame = await ws.recv_type("event")

    assert frame["data"] == {"type": "connection", "x": 1}


async def test_object_typed_event_is_still_wrapped_in_data(
    client: TestClient, connect: Connect, token: Mint
):
    ws = await connect()

    await publish(client, token(), {"type": "event", "x": 1})
    frame = await ws.recv_type("event")

    assert frame["data"] == {"type": "event", "x": 1}


async def test_system_event_keeps_its_type_and_fields_and_envelope_keys_are_ignored(
    client: TestClient, connect: Connect, token: Mint
):
    ws = await connect()
    event = {
        "type": "system_event",
        "level": "warning",
        "message": "disk almost full",
        "data": {"pct": 91},
        "channel": "elsewhere",
        "offset": 99,
        "epoch": "forged",
        "timestamp": "1970-01-01T00:00:00.000Z",
    }

    receipt = await (await publish(client, token(), event)).json()
    frame = await ws.recv_type("system_event")

    assert frame["channel"] == "general"
    assert frame["offset"] == 1
    assert frame["epoch"] == receipt["epoch"]
    assert frame["timestamp"] != "1970-01-01T00:00:00.000Z"
    assert ISO_UTC.match(frame["timestamp"])
    assert frame["level"] == "warning"
    assert frame["message"] == "disk almost full"
    assert frame["data"] == {"pct": 91}
    assert receipt == {"channel": "general", "offset": 1, "epoch": frame["epoch"]}


async def test_publication_reaches_only_that_channel(
    client: TestClient, connect: Connect, token: Mint
):
    general = await connect()
    sensors = await connect(params={"channel": "sensors"})

    await publish(client, token(), {"a": 1}, channel="sensors")

    assert (await sensors.recv_type("event"))["channel"] == "sensors"
    await general.nothing()


# -- test-event ------------------------------------------------------------------------------


async def test_test_event_publishes_system_event(client: TestClient, connect: Connect, token: Mint):
    ws = await connect()

    resp = await client.post(
        "/api/v1/ws/test-event?channel=general&message=hola", headers=auth_header(token())
    )

    assert resp.status == 202
    receipt = await resp.json()
    frame = await ws.recv_type("system_event")
    assert frame["message"] == "hola"
    assert frame["level"] == "info"
    assert frame["data"] == {}
    assert frame["channel"] == "general"
    assert receipt == {"channel": "general", "offset": frame["offset"], "epoch": frame["epoch"]}


async def test_test_event_defaults_to_general(client: TestClient, connect: Connect, token: Mint):
    ws = await connect()

    resp = await client.post("/api/v1/ws/test-event", headers=auth_header(token()))

    assert resp.status == 202
    assert (await resp.json())["channel"] == "general"
    assert (await ws.recv_type("system_event"))["message"] == "test event"


async def test_test_event_without_token_is_401(client: TestClient):
    resp = await client.post("/api/v1/ws/test-event?channel=general&message=hola")

    await error_of(resp, 401, "unauthorized")


async def test_test_event_bad_level_is_422_naming_level(client: TestClient, token: Mint):
    resp = await client.post("/api/v1/ws/test-event?level=loud", headers=auth_header(token()))

    error = await error_of(resp, 422, "bad_request")
    assert list(error["details"]) == ["level"]


# -- stats -----------------------------------------------------------------------------------


async def test_stats_count_connections_channels_and_frames(
    client: TestClient, connect: Connect, token: Mint
):
    ws = await connect(params={"channel": "general,sensors", "token": token("user", "alice")})
    for i in range(3):
        await ws.send({"type": "ping", "id": i})
        await ws.recv_type("pong")
    await publish(client, token(), {"a": 1})
    await ws.recv_type("event")

    # A token: anonymous callers are not shown authenticated users' ids.
    stats = await (await client.get("/api/v1/stats", headers=auth_header(token()))).json()

    assert stats["connections"] == 1
    assert stats["connections_total"] == 1
    assert stats["channels"] == {
        "general": {"channel": "general", "subscribers": 1, "users": ["alice"]},
        "sensors": {"channel": "sensors", "subscribers": 1, "users": ["alice"]},
    }
    assert stats["messages_in"] == 3
    assert stats["messages_out"] == 1
    assert stats["publications"] == 1
    assert stats["dropped_slow_consumers"] == 0
    assert stats["uptime"] >= 0


async def test_stats_forget_a_closed_socket(client: TestClient, connect: Connect):
    ws = await connect()
    await ws.close()

    for _ in range(100):
        stats = await (await client.get("/api/v1/stats")).json()
        if stats["connections"] == 0:
            break
    assert stats["connections"] == 0
    assert stats["channels"] == {}
    assert stats["connections_total"] == 1


async def test_channel_stats_give_subscribers_users_and_position(
    client: TestClient, connect: Connect, token: Mint
):
    await connect(params={"token": token("user", "bob")})
    await connect(params={"token": token("user", "alice")})
    receipt = await (await publish(client, token(), {"a": 1})).json()

    resp = await client.get("/api/v1/stats/channels/general", headers=auth_header(token()))

    assert resp.status == 200
    assert await resp.json() == {
        "channel": "general",
        "subscribers": 2,
        "users": ["alice", "bob"],
        "offset": 1,
        "epoch": receipt["epoch"],
    }


async def test_channel_stats_of_an_unused_channel(client: TestClient):
    body = await (await client.get("/api/v1/stats/channels/readings:42")).json()

    assert body["subscribers"] == 0
    assert body["users"] == []
    assert body["offset"] == 0


async def test_channel_stats_bad_name_is_422(client: TestClient):
    resp = await client.get("/api/v1/stats/channels/BAD")

    error = await error_of(resp, 422, "bad_request")
    assert list(error["details"]) == ["channel"]


async def test_stats_over_ws_request_equal_rest(client: TestClient, connect: Connect, token: Mint):
    ws = await connect(params={"channel": "general,sensors"})
    await publish(client, token(), {"a": 1})
    await ws.recv_type("event")

    reply = await ws.request({"type": "request", "id": 1, "resource": "stats", "action": "get"})
    rest = await (await client.get("/api/v1/stats")).json()

    assert reply["type"] == "response"
    assert reply["id"] == 1
    over_ws = reply["data"]
    assert over_ws["messages_in"] == 1
    del over_ws["uptime"], rest["uptime"]
    assert over_ws == rest


async def test_channel_stats_over_ws_request_equal_rest(client: TestClient, connect: Connect):
    ws = await connect()

    reply = await ws.request(
        {
            "type": "request",
            "id": "c",
            "resource": "stats",
            "action": "channel",
            "payload": {"channel": "general"},
        }
    )
    rest = await (await client.get("/api/v1/stats/channels/general")).json()

    assert reply["type"] == "response"
    assert reply["id"] == "c"
    assert reply["data"] == rest


# -- events over WS `request` -------------------------------------------------------------------


async def test_ws_request_events_create_with_service_token_publishes(
    client: TestClient, connect: Connect, token: Mint
):
    listener = await connect()
    service = await connect(params={"channel": "sensors", "token": token("service")})

    reply = await service.request(
        {
            "type": "request",
            "id": 7,
            "resource": "events",
            "action": "create",
            "payload": {"channel": "general", "event": {"hello": 1}},
        }
    )

    assert reply["type"] == "response"
    assert reply["id"] == 7
    frame = await listener.recv_type("event")
    assert frame["data"] == {"hello": 1}
    assert reply["data"] == {"channel": "general", "offset": 1, "epoch": frame["epoch"]}


async def test_ws_request_events_create_anonymous_is_unauthorized_and_socket_stays(
    connect: Connect,
):
    ws = await connect()

    reply = await ws.request(
        {
            "type": "request",
            "id": 8,
            "resource": "events",
            "action": "create",
            "payload": {"channel": "general", "event": {"hello": 1}},
        }
    )

    assert reply["type"] == "error"
    assert reply["id"] == 8
    assert reply["code"] == "unauthorized"
    assert (await ws.request({"type": "ping", "id": 9}))["type"] == "pong"
    await ws.nothing()


async def test_ws_request_events_create_with_user_token_is_forbidden(connect: Connect, token: Mint):
    ws: WS = await connect(params={"token": token("user", "alice")})

    reply = await ws.request(
        {
            "type": "request",
            "id": 3,
            "resource": "events",
            "action": "create",
            "payload": {"channel": "general", "event": {}},
        }
    )

    assert reply["code"] == "forbidden"
    assert reply["id"] == 3


# -- OpenAPI ---------------------------------------------------------------------------------


async def test_openapi_is_a_valid_openapi_3_document(client: TestClient):
    resp = await client.get("/api/v1/openapi.json")

    assert resp.status == 200
    assert resp.content_type == "application/json"
    doc = await resp.json()
    assert doc["openapi"].startswith("3.")
    errors = [e.message for e in jsonschema_rs.Draft4Validator(OPENAPI_30).iter_errors(doc)]
    assert errors == []
    assert {
        "/api/v1/stats",
        "/api/v1/stats/channels/{channel}",
        "/api/v1/events/{channel}",
        "/api/v1/ws/test-event",
    } <= set(doc["paths"])
    assert set(doc["paths"]["/api/v1/events/{channel}"]) == {"post"}
    assert doc["paths"]["/api/v1/stats"]["get"]["operationId"] == "stats_get"
    assert doc["paths"]["/api/v1/events/{channel}"]["post"]["security"] == [{"bearer": []}]
    query = doc["paths"]["/api/v1/ws/test-event"]["post"]["parameters"]
    assert {p["name"] for p in query} == {"channel", "message", "level"}


# -- authentication ---------------------------------------------------------------------------


async def test_expired_token_is_401_saying_expired(client: TestClient, token: Mint):
    resp = await client.get("/api/v1/stats", headers=auth_header(token(ttl=-10)))

    error = await error_of(resp, 401, "unauthorized")
    assert "expired" in error["message"]


async def test_token_signed_with_another_secret_is_401(client: TestClient):
    forged = jwt.encode(
        {"sub": "mallory", "role": "admin", "exp": 9_999_999_999}, "x" * 32, algorithm="HS256"
    )

    resp = await publish(client, forged, {"a": 1})

    error = await error_of(resp, 401, "unauthorized")
    assert "invalid token" in error["message"]


async def test_token_with_unknown_role_is_401(client: TestClient, token: Mint):
    resp = await publish(client, token(role="root"), {"a": 1})

    await error_of(resp, 401, "unauthorized")


async def test_garbage_token_is_401_even_where_anonymous_may_read(client: TestClient):
    resp = await client.get("/api/v1/stats", headers=auth_header("not-a-token"))

    await error_of(resp, 401, "unauthorized")


async def test_without_anonymous_access_a_token_is_required(make_client: Callable[..., Any]):
    client = await make_client({"auth": {"allow_anonymous": False}})
    tok = client.app[AUTH].mint("tester", "user")

    without = await client.get("/api/v1/stats")
    with_token = await client.get("/api/v1/stats", headers=auth_header(tok))

    await error_of(without, 401, "unauthorized")
    assert with_token.status == 200
    assert (await with_token.json())["connections"] == 0


async def test_without_anonymous_access_health_stays_open(make_client: Callable[..., Any]):
    client = await make_client({"auth": {"allow_anonymous": False}})

    health = await client.get("/health")
    info = await client.get("/api/v1/")

    assert health.status == 200
    assert (await health.json())["status"] == "healthy"
    assert info.status == 200
    assert (await info.json())["name"] == "sensorcast"


async def test_anonymous_writes_let_token_less_publish_through(make_client: Callable[..., Any]):
    client = await make_client({"auth": {"anonymous_writes": True}})
    ws = await open_ws(client)

    resp = await client.post("/api/v1/events/general", json={"a": 1})

    assert resp.status == 202
    assert (await ws.recv_type("event"))["data"] == {"a": 1}


async def test_system_event_missing_fields_get_defaults(
    client: TestClient, connect: Connect, token: Mint
):
    ws = await connect()
    await publish(client, token(), {"type": "system_event", "message": "disk 91%"})
    frame = await ws.recv_type("system_event")
    assert (frame["level"], frame["message"], frame["data"]) == ("info", "disk 91%", {})


async def test_write_without_token_is_401_whatever_the_body(client: TestClient):
    resp = await client.post("/api/v1/events/general", data=b"not json")
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "unauthorized"
