"""Authorization matrix: each role x each endpoint class, over REST and WS `request`, and
each role x each channel namespace, at connect time (close code) and after (error frame).

Rows are data: a new endpoint class (notify, broadcast, rooms...) is one more `Endpoint`
in ENDPOINTS, a new namespace one more entry in NAMESPACE_CASES.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.keys import AUTH, HUB, SERVICES
from tests.api.test_system import error_of
from tests.conftest import auth_header, make_config, open_ws

ROLES = ("admin", "service", "user", "device", "anonymous")

# A matrix app: the shipped default namespace plus two restricted ones, to see role lists
# applied (the shipped config has only `default`).
NAMESPACES = {
    "default": {"subscribe": ["anonymous", "user", "device", "service", "admin"], "publish": []},
    "ops": {"subscribe": ["service"], "publish": []},
    "telemetry": {"subscribe": ["user", "device", "service"], "publish": ["device"]},
}


@pytest.fixture
async def client(aiohttp_client: Any, tmp_path: Path) -> TestClient:
    from server.app import create_app

    config = make_config(tmp_path, {"channels": {"namespaces": NAMESPACES}})
    return await aiohttp_client(create_app(config))


@pytest.fixture
async def sensor_id(client: TestClient) -> int:
    storage = client.app[SERVICES].storage
    # Owned by the matrix's device token, so `device` may post its readings.
    sql = "INSERT INTO sensors (type, thresholds, device) VALUES (?, ?, ?) RETURNING id"
    return int(await storage.fetchval(sql, "temperature", {}, "device-1"))


def token_for(client: TestClient, role: str) -> str | None:
    if role == "anonymous":
        return None
    return client.app[AUTH].mint(f"{role}-1", role)


# -- REST and WS `request` ---------------------------------------------------------------------

OK = "ok"


@dataclass(frozen=True)
class Endpoint:
    """One endpoint class: how to call it over REST and WS, and who may."""

    name: str
    method: str
    path: str  # {sensor} is filled in
    body: Any
    status: int  # on success
    allowed: tuple[str, ...]
    resource: str
    action: str
    payload: Any
    # What a success returns (REST body, WS `data`) on the fixture's fresh database: a
    # status alone would pass a handler that answers 200 with someone else's data.
    answer: Callable[[Any, int], bool] = lambda data, sensor: "error" not in data

    def expected(self, role: str) -> str:
        if role in self.allowed:
            return OK
        return "unauthorized" if role == "anonymous" else "forbidden"


ENDPOINTS = [
    Endpoint(
        "read",
        "GET",
        "/api/v1/sensors",
        None,
        200,
        ROLES,
        "sensors",
        "list",
        {},
        lambda d, s: [(i["id"], i["device"]) for i in d["items"]] == [(s, "device-1")],
    ),
    Endpoint(
        "write",
        "POST",
        "/api/v1/locations",
        {"name": "plant"},
        201,
        ("admin", "service"),
        "locations",
        "create",
        {"name": "plant"},
        lambda d, s: (d["id"], d["name"]) == (1, "plant"),
    ),
    Endpoint(
        "readings",
        "POST",
        "/api/v1/readings",
        {"sensor_id": "{sensor}", "values": {"t": 1.5}},
        201,
        ("admin", "service", "device"),
        "readings",
        "create",
        {"sensor_id": "{sensor}", "values": {"t": 1.5}},
        lambda d, s: d == {"accepted": 1},
    ),
    Endpoint(
        "publish",
        "POST",
        "/api/v1/events/general",
        {"type": "system_event", "message": "hi"},
        202,
        ("admin", "service"),
        "events",
        "create",
        {"channel": "sensors:99", "event": {"message": "hi"}},
        lambda d, s: (set(d), d["offset"]) == ({"channel", "offset", "epoch"}, 1),
    ),
    Endpoint(
        "notify",
        "POST",
        "/api/v1/notify",
        {"event": "user.ping", "payload": {"user_id": "7"}},
        202,
        ("admin", "service"),
        "notifications",
        "create",
        {"event": "user.ping", "payload": {"user_id": "7"}},
        lambda d, s: (d["channel"], d["notification"]["event"]) == ("user:7", "user.ping"),
    ),
    Endpoint(
        "broadcast",
        "POST",
        "/api/v1/broadcast/lobby",
        {"content": "hi"},
        202,
        ("admin", "service"),
        "rooms",
        "broadcast",
        {"room": "lobby", "content": "hi"},
        lambda d, s: (d["channel"], d["message"]["content"]) == ("chat:lobby", "hi"),
    ),
    Endpoint(
        "rooms",
        "GET",
        "/api/v1/rooms",
        None,
        200,
        ROLES,
        "rooms",
        "list",
        {},
        lambda d, s: d == {"items": [], "next_cursor": None},
    ),
    Endpoint(
        "history",
        "GET",
        "/api/v1/messages/lobby",
        None,
        200,
        ROLES,
        "messages",
        "list",
        {"room": "lobby"},
        lambda d, s: d == {"items": [], "next_cursor": None},
    ),
    Endpoint(
        "notifications",
        "GET",
        "/api/v1/notifications",
        None,
        200,
        ROLES,
        "notifications",
        "list",
        {},
        lambda d, s: d == {"items": [], "next_cursor": None},
    ),
]


def fill(value: Any, sensor: int) -> Any:
    if value == "{sensor}":
        return sensor
    if isinstance(value, dict):
        return {k: fill(v, sensor) for k, v in value.items()}
    return value


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
async def test_rest_matrix(client: TestClient, sensor_id: int, endpoint: Endpoint, role: str):
    tok = token_for(client, role)
    resp = await client.request(
        endpoint.method,
        endpoint.path,
        json=fill(endpoint.body, sensor_id),
        headers=auth_header(tok) if tok else {},
    )
    expected = endpoint.expected(role)
    if expected == OK:
        assert resp.status == endpoint.status, await resp.text()
        assert endpoint.answer(await resp.json(), sensor_id), await resp.text()
    else:
        await error_of(resp, 401 if expected == "unauthorized" else 403, expected)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
async def test_ws_request_matrix(client: TestClient, sensor_id: int, endpoint: Endpoint, role: str):
    tok = token_for(client, role)
    ws = await open_ws(client, f"/api/v1/ws?token={tok}" if tok else "/api/v1/ws")
    reply = await ws.request(
        {
            "type": "request",
            "id": 1,
            "resource": endpoint.resource,
            "action": endpoint.action,
            "payload": fill(endpoint.payload, sensor_id),
        }
    )
    expected = endpoint.expected(role)
    if expected == OK:
        assert (reply["type"], reply["id"]) == ("response", 1), reply
        assert endpoint.answer(reply["data"], sensor_id), reply
    else:
        assert (reply["type"], reply["code"], reply["id"]) == ("error", expected, 1)
    # Refused or not, the socket stays usable.
    assert (await ws.request({"type": "ping"}))["type"] == "pong"


async def test_refused_write_reads_no_body(client: TestClient):
    """Authorization comes before the body: a 403 even for a body that is not JSON."""
    tok = token_for(client, "user")
    assert tok is not None
    resp = await client.post("/api/v1/locations", data=b"{not json", headers=auth_header(tok))
    await error_of(resp, 403, "forbidden")


# -- channel namespaces ------------------------------------------------------------------------

# channel -> roles that may subscribe ("self" = the token's own user:{sub}).
NAMESPACE_CASES: dict[str, tuple[str, ...]] = {
    "general": ROLES,
    "sensors:1": ROLES,
    "readings": ROLES,
    "chat:lobby": ROLES,
    "ops": ("admin", "service"),
    "ops:alerts": ("admin", "service"),
    "telemetry:7": ("admin", "service", "user", "device"),
    "user:self": ("admin", "service", "user", "device"),
    "user:someone-else": ("admin",),
    "user:anonymous": ("admin",),
}


def channel_for(channel: str, role: str) -> str:
    return f"user:{role}-1" if channel == "user:self" else channel


def query(tok: str | None, channel: str) -> str:
    q = f"/api/v1/ws?channel={channel}"
    return f"{q}&token={tok}" if tok else q


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("channel", list(NAMESPACE_CASES))
async def test_subscribe_at_connect(client: TestClient, channel: str, role: str):
    target = channel_for(channel, role)
    ws = await open_ws(client, query(token_for(client, role), target), handshake=False)
    if role in NAMESPACE_CASES[channel]:
        await ws.recv_type("connection")
        assert (await ws.recv_type("subscribed"))["channel"] == target
    else:
        assert await ws.closed() == (4003, f"not allowed: {target}")


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("channel", list(NAMESPACE_CASES))
async def test_subscribe_frame(client: TestClient, channel: str, role: str):
    target = channel_for(channel, role)
    ws = await open_ws(client, query(token_for(client, role), "general"))
    reply = await ws.request({"type": "subscribe", "id": 9, "channel": target})
    if target == "general":
        assert (reply["type"], reply["code"]) == ("error", "conflict")
    elif role in NAMESPACE_CASES[channel]:
        assert (reply["type"], reply["channel"]) == ("subscribed", target)
    else:
        assert (reply["type"], reply["code"], reply["id"]) == ("error", "forbidden", 9)
    assert (await ws.request({"type": "ping"}))["type"] == "pong"


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(
    ("channel", "allowed"),
    [("general", ("admin",)), ("telemetry:7", ("admin", "device")), ("ops", ("admin",))],
)
async def test_client_publish_frame(client: TestClient, channel: str, allowed: tuple, role: str):
    ws = await open_ws(client, query(token_for(client, role), "sensors:1"))
    reply = await ws.request({"type": "publish", "id": 2, "channel": channel, "data": {"x": 1}})
    if role in allowed:
        assert (reply["type"], reply["id"]) == ("response", 2), reply
        assert (reply["data"]["channel"], reply["data"]["offset"]) == (channel, 1), reply
    else:
        assert (reply["type"], reply["code"], reply["id"]) == ("error", "forbidden", 2)


async def test_anonymous_user_id_never_grants_user_channel(client: TestClient):
    ws = await open_ws(client, "/api/v1/ws?user_id=alice&channel=user:alice", handshake=False)
    assert (await ws.closed())[0] == 4003
    ws = await open_ws(client, "/api/v1/ws?user_id=alice&username=Alice")
    reply = await ws.request({"type": "subscribe", "channel": "user:alice"})
    assert reply["code"] == "forbidden"


# -- the `channels` claim ----------------------------------------------------------------------


@pytest.mark.parametrize("role", ["admin", "service", "user"])
async def test_channels_claim_narrows_every_role(client: TestClient, role: str):
    tok = client.app[AUTH].mint("u1", role, channels=["sensors:*", "user:u1"])
    refused = await open_ws(client, query(tok, "general"), handshake=False)
    assert (await refused.closed())[0] == 4003
    ws = await open_ws(client, query(tok, "sensors:1"))
    assert (await ws.request({"type": "subscribe", "channel": "sensors:2"}))["type"] == "subscribed"
    assert (await ws.request({"type": "subscribe", "channel": "user:u1"}))["type"] == "subscribed"
    for channel in ("readings", "sensors", "general", "user:u2"):
        reply = await ws.request({"type": "subscribe", "channel": channel})
        assert reply["code"] == "forbidden", channel


async def test_channels_claim_never_widens(client: TestClient):
    tok = client.app[AUTH].mint("u1", "user", channels=["user:*", "ops", "*"])
    ws = await open_ws(client, query(tok, "general"))
    for channel in ("user:u2", "ops"):
        assert (await ws.request({"type": "subscribe", "channel": channel}))["code"] == "forbidden"


async def test_empty_channels_claim_allows_nothing(client: TestClient):
    tok = client.app[AUTH].mint("u1", "admin", channels=[])
    ws = await open_ws(client, query(tok, "general"), handshake=False)
    assert (await ws.closed())[0] == 4003


# -- reads beyond subscribe: history, stats, seed adapters (one read check) ---------------------

# Chat restricted to two roles (admin always may): a room's history, its stats and its
# seed views follow the same rule as subscribing to it.
RESTRICTED = {**NAMESPACES, "chat": {"subscribe": ["user", "service"], "presence": True}}
READERS = ("admin", "service", "user")


@pytest.fixture
async def restricted(aiohttp_client: Any, tmp_path: Path) -> TestClient:
    from server.app import create_app

    config = make_config(tmp_path, {"channels": {"namespaces": RESTRICTED}})
    app = create_app(config)
    client = await aiohttp_client(app)
    services = client.app[SERVICES]
    await services.chat.store_message("lobby", "user-1", "User", "hello")
    await services.notifications.notify("ops.alert", {}, "ops")
    await services.notifications.notify("user.note", {}, "user:user-1")
    await services.notifications.notify("news", {}, "general")
    return client


@dataclass(frozen=True)
class Read:
    """A read of a channel's content: REST path, WS `request` (or None), who may."""

    name: str
    path: str
    request: tuple[str, str, dict[str, Any]] | None
    allowed: tuple[str, ...]
    # The success body (REST and WS `data`) on the fixture's data, not only the status.
    answer: Callable[[Any], bool] = lambda data: "error" not in data


READS = [
    Read(
        "history",
        "/api/v1/messages/lobby",
        ("messages", "list", {"room": "lobby"}),
        READERS,
        lambda d: [(m["room"], m["content"]) for m in d["items"]] == [("lobby", "hello")],
    ),
    Read(
        "room-connections",
        "/api/v1/rooms/lobby/connections",
        ("rooms", "connections", {"room": "lobby"}),
        READERS,
        lambda d: (
            (d["room"], d["channel"], d["count"], d["clients"]) == ("lobby", "chat:lobby", 0, [])
        ),
    ),
    Read(
        "channel-stats",
        "/api/v1/stats/channels/chat:lobby",
        ("stats", "channel", {"channel": "chat:lobby"}),
        READERS,
        lambda d: (d["channel"], d["subscribers"], d["offset"]) == ("chat:lobby", 0, 0),
    ),
    Read(
        "ops-stats",
        "/api/v1/stats/channels/ops",
        ("stats", "channel", {"channel": "ops"}),
        ("admin", "service"),
        lambda d: (d["channel"], d["subscribers"], d["offset"]) == ("ops", 0, 1),
    ),
    Read(
        "private-stats",
        "/api/v1/stats/channels/user:user-1",
        ("stats", "channel", {"channel": "user:user-1"}),
        ("admin", "user"),
        lambda d: (d["channel"], d["subscribers"], d["offset"]) == ("user:user-1", 0, 1),
    ),
    Read(
        "ops-notifications",
        "/api/v1/notifications?channel=ops",
        ("notifications", "list", {"channel": "ops"}),
        ("admin", "service"),
        lambda d: [(n["channel"], n["event"]) for n in d["items"]] == [("ops", "ops.alert")],
    ),
    Read(
        "seed004-channel-stats",
        "/api/v1/ws/stats/chat:lobby",
        None,
        READERS,
        lambda d: d == {"channel": "chat:lobby", "connections": 0, "users": []},
    ),
    Read(
        "seed004-private-stats",
        "/api/v1/ws/stats/user:user-1",
        None,
        ("admin", "user"),
        lambda d: d == {"channel": "user:user-1", "connections": 0, "users": []},
    ),
]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("read", READS, ids=lambda r: r.name)
async def test_read_matrix_rest(restricted: TestClient, read: Read, role: str):
    tok = token_for(restricted, role)
    resp = await restricted.get(read.path, headers=auth_header(tok) if tok else {})
    if role in read.allowed:
        assert resp.status == 200, await resp.text()
        assert read.answer(await resp.json()), await resp.text()
    else:
        await error_of(resp, 403, "forbidden")


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("read", [r for r in READS if r.request], ids=lambda r: r.name)
async def test_read_matrix_ws_request(restricted: TestClient, read: Read, role: str):
    assert read.request is not None
    resource, action, payload = read.request
    tok = token_for(restricted, role)
    ws = await open_ws(restricted, f"/api/v1/ws?token={tok}" if tok else "/api/v1/ws")
    frame = {"type": "request", "id": 4, "resource": resource, "action": action}
    reply = await ws.request({**frame, "payload": payload})
    if role in read.allowed:
        assert (reply["type"], reply["id"]) == ("response", 4), reply
        assert read.answer(reply["data"]), reply
    else:
        assert (reply["type"], reply["code"], reply["id"]) == ("error", "forbidden", 4)


SEED001_READS = [
    ("messages", {"action": "get_all", "conversation_id": "lobby"}),
    ("conversations", {"action": "get", "conversation_id": "lobby"}),
]
# What each answers (its `payload`), for the roles that may read the room.
SEED001_ANSWERS: dict[str, Callable[[Any], bool]] = {
    "messages": lambda p: [m["content"] for m in p["messages"]] == ["hello"],
    "conversations": lambda p: (
        (p["conversation"]["id"], p["conversation"]["messages"]) == ("lobby", 1)
    ),
}


@pytest.mark.parametrize("role", ["admin", "service", "user", "device"])
@pytest.mark.parametrize(("resource", "payload"), SEED001_READS, ids=("messages", "conversation"))
async def test_read_matrix_seed001(restricted: TestClient, resource: str, payload: Any, role: str):
    tok = token_for(restricted, role)
    ws = await open_ws(restricted, f"/ws?token={tok}", handshake=False)
    for _ in range(2):  # the seed's greeting events: connection, subscribed
        await ws.recv_type("event")
    await ws.send({"type": "request", "id": "q", "resource": resource, "payload": payload})
    reply = await ws.recv()
    while reply["type"] == "event":  # pushes (none expected before the answer)
        reply = await ws.recv()
    if role in READERS:
        assert (reply["type"], reply["id"]) == ("response", "q"), reply
        assert SEED001_ANSWERS[resource](reply["payload"]), reply
    else:
        assert (reply["type"], reply["payload"]["code"]) == ("error", "forbidden")
        # Nothing of the room was sent, and the socket did not join it.
        assert not any(
            ch.startswith("chat:")
            for conn in restricted.app[HUB].clients.values()
            for ch in conn.subscriptions
        )


@pytest.mark.parametrize("role", ROLES)
async def test_lists_leave_out_what_the_caller_may_not_read(restricted: TestClient, role: str):
    tok = token_for(restricted, role)
    headers = auth_header(tok) if tok else {}
    owner = token_for(restricted, "user")
    await open_ws(restricted, f"/api/v1/ws?channel=general,user:user-1&token={owner}")

    rooms = await (await restricted.get("/api/v1/rooms", headers=headers)).json()
    notes = await (await restricted.get("/api/v1/notifications", headers=headers)).json()
    stats = await (await restricted.get("/api/v1/stats", headers=headers)).json()
    seed004 = await (await restricted.get("/api/v1/ws/stats", headers=headers)).json()

    assert [r["room"] for r in rooms["items"]] == (["lobby"] if role in READERS else [])
    readable = {"general"}
    if role in ("admin", "service"):
        readable.add("ops")
    if role in ("admin", "user"):
        readable.add("user:user-1")
    assert {n["channel"] for n in notes["items"]} == readable
    channels = {"general", "user:user-1"} if role in ("admin", "user") else {"general"}
    assert set(stats["channels"]) == channels
    assert set(seed004["channels"]) == channels
    # An anonymous caller is shown no authenticated user's id.
    shown = stats["channels"]["general"]["users"]
    assert shown == ([] if role == "anonymous" else ["user-1"])


STATS_PATHS = [
    "/api/v1/stats",
    "/api/v1/stats/channels/general",
    "/api/v1/ws/stats",
    "/api/v1/ws/stats/general",
    "/ws/stats",
    "/stats",
    "/api/v1/status",
]


@pytest.mark.parametrize("path", STATS_PATHS)
async def test_stats_need_a_token_without_anonymous_access(
    aiohttp_client: Any, tmp_path: Path, path: str
):
    from server.app import create_app

    config = make_config(tmp_path, {"auth": {"allow_anonymous": False}})
    client = await aiohttp_client(create_app(config))

    refused = await client.get(path)
    allowed = await client.get(path, headers=auth_header(client.app[AUTH].mint("u", "user")))

    await error_of(refused, 401, "unauthorized")
    assert allowed.status == 200, await allowed.text()
