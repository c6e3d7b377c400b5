"""POST /api/v1/notify: routing by config to a user, a room or everyone; stored history and
who may read it; on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.config import Config, NotificationRoute, NotificationsConfig
from server.keys import SERVICES
from server.services.notifications import NotificationService
from tests.api.test_system import Mint, error_of
from tests.conftest import WS, Connect, auth_header, make_config

# Fixtures: every test here runs on SQLite and on PostgreSQL (skipped loudly when down).
from tests.storage.conftest import Opener, backend, open_db, pg_server_url  # noqa: F401


@pytest.fixture(autouse=True)
def config(open_db: Opener, tmp_path: Path) -> Config:  # noqa: F811
    return make_config(tmp_path, {"database": {"url": open_db.url}})


async def notify(client: TestClient, tok: str | None, body: Any) -> Any:
    headers = auth_header(tok) if tok else {}
    return await client.post("/api/v1/notify", json=body, headers=headers)


async def user_socket(connect: Connect, token: Mint, sub: str) -> WS:
    return await connect(params={"token": token("user", sub), "channel": f"user:{sub}"})


async def test_user_event_reaches_only_that_users_socket(
    client: TestClient, connect: Connect, token: Mint
):
    alice = await user_socket(connect, token, "alice")
    bob = await user_socket(connect, token, "bob")
    everyone = await connect()

    resp = await notify(
        client, token(), {"event": "user.mention", "payload": {"user_id": "alice", "n": 1}}
    )

    assert resp.status == 202, await resp.text()
    answer = await resp.json()
    frame = await alice.recv_type("notification")
    assert frame["channel"] == "user:alice"
    assert (frame["event"], frame["payload"]) == ("user.mention", {"user_id": "alice", "n": 1})
    assert frame["id"] == answer["notification"]["id"]
    assert (answer["channel"], answer["offset"]) == ("user:alice", frame["offset"])
    await bob.nothing()
    await everyone.nothing()


async def test_room_payload_routes_to_the_chat_room(
    client: TestClient, connect: Connect, token: Mint
):
    member = await connect("/ws/ops", params={"user_id": "1"})
    outsider = await connect()

    resp = await notify(client, token(), {"event": "deploy.done", "payload": {"room": "ops"}})

    assert resp.status == 202
    frame = await member.recv_type("notification")
    assert (frame["channel"], frame["event"]) == ("chat:ops", "deploy.done")
    await outsider.nothing()


async def test_anything_else_goes_to_general(client: TestClient, connect: Connect, token: Mint):
    socks = [await connect() for _ in range(2)]

    resp = await notify(client, token(), {"event": "maintenance", "payload": {"at": "22:00"}})

    assert (await resp.json())["channel"] == "general"
    for ws in socks:
        frame = await ws.recv_type("notification")
        assert frame["payload"] == {"at": "22:00"}


async def test_explicit_channel_skips_routing(client: TestClient, connect: Connect, token: Mint):
    ws = await connect(params={"channel": "alerts"})

    body = {"event": "user.x", "payload": {"user_id": "alice"}, "channel": "alerts"}
    resp = await notify(client, token(), body)

    assert (await resp.json())["channel"] == "alerts"
    assert (await ws.recv_type("notification"))["event"] == "user.x"


async def test_notification_for_an_offline_user_is_stored_and_in_their_history(
    client: TestClient, token: Mint
):
    await notify(client, token(), {"event": "user.invoice", "payload": {"user_id": "carol"}})
    await notify(client, token(), {"event": "user.invoice", "payload": {"user_id": "dave"}})
    await notify(client, token(), {"event": "news", "payload": {}})

    rows = await client.app[SERVICES].storage.fetch(
        "SELECT event, channel, payload FROM notifications ORDER BY id"
    )
    as_carol = await client.get(
        "/api/v1/notifications", headers=auth_header(token("user", "carol"))
    )
    # The history obeys the subscribe rule: user:{id} is its user's and admins' only.
    as_admin = await client.get(
        "/api/v1/notifications?limit=2", headers=auth_header(token("admin"))
    )
    as_service = await client.get("/api/v1/notifications", headers=auth_header(token()))
    anonymous = await client.get("/api/v1/notifications")

    assert [(r["channel"], r["payload"]) for r in rows] == [
        ("user:carol", {"user_id": "carol"}),
        ("user:dave", {"user_id": "dave"}),
        ("general", {}),
    ]
    carol_items = (await as_carol.json())["items"]
    assert [i["channel"] for i in carol_items] == ["general", "user:carol"]
    admin_page = await as_admin.json()
    assert [i["channel"] for i in admin_page["items"]] == ["general", "user:dave"]
    assert admin_page["next_cursor"] is not None
    assert [i["channel"] for i in (await as_service.json())["items"]] == ["general"]
    assert [i["channel"] for i in (await anonymous.json())["items"]] == ["general"]
    item = carol_items[1]
    assert set(item) == {"id", "event", "channel", "payload", "created_at"}


async def test_history_filters_by_channel_and_event(client: TestClient, token: Mint):
    await notify(client, token(), {"event": "a", "payload": {"room": "x"}})
    await notify(client, token(), {"event": "b", "payload": {"room": "x"}})
    await notify(client, token(), {"event": "a", "payload": {}})

    by_channel = await client.get(
        "/api/v1/notifications?channel=chat:x", headers=auth_header(token())
    )
    by_event = await client.get("/api/v1/notifications?event=a", headers=auth_header(token()))

    assert [i["event"] for i in (await by_channel.json())["items"]] == ["b", "a"]
    assert [i["channel"] for i in (await by_event.json())["items"]] == ["general", "chat:x"]


async def test_notify_without_token_is_401_and_stores_nothing(client: TestClient, token: Mint):
    resp = await notify(client, None, {"event": "x", "payload": {}})
    as_user = await notify(client, token("user"), {"event": "x", "payload": {}})

    await error_of(resp, 401, "unauthorized")
    await error_of(as_user, 403, "forbidden")
    assert await client.app[SERVICES].storage.fetch("SELECT * FROM notifications") == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"payload": {}}, "event"),
        ({"event": "", "payload": {}}, "event"),
        ({"event": "x", "payload": [1]}, "payload"),
        ({"event": "x", "channel": "Not Valid"}, "channel"),
        ({"event": "user.x", "payload": {"user_id": "a b"}}, "payload"),
    ],
)
async def test_bad_notifications_are_422_and_store_nothing(
    client: TestClient, token: Mint, body: dict[str, Any], field: str
):
    error = await error_of(await notify(client, token(), body), 422, "bad_request")

    assert field in error["details"]
    assert await client.app[SERVICES].storage.fetch("SELECT * FROM notifications") == []


async def test_stats_count_notifications_sent(client: TestClient, token: Mint):
    for _ in range(3):
        await notify(client, token(), {"event": "x", "payload": {}})

    stats = await (await client.get("/api/v1/stats")).json()

    assert stats["notifications_sent"] == 3


def test_routes_are_tried_in_order_with_placeholders():
    routes = NotificationsConfig(
        routes=[
            NotificationRoute(event="user.*", key="usuarioId", channel="user:{usuarioId}"),
            NotificationRoute(event="tema.*", channel="chat:tema_{temaId}"),
            NotificationRoute(event="user.*", key="user_id", channel="user:{user_id}"),
        ],
        default_channel="general",
    )
    service = NotificationService(None, None, routes)  # type: ignore[arg-type]

    assert service.route("user.login", {"usuarioId": 7}) == "user:7"
    assert service.route("user.login", {"user_id": "ana", "usuarioId": True}) == "user:ana"
    assert service.route("tema.nuevo", {"temaId": 3}) == "chat:tema_3"
    assert service.route("tema.nuevo", {}) == "general"
    assert service.route("other", {"usuarioId": 7}) == "general"


async def test_trim_keeps_the_newest_history_size(client: TestClient, token: Mint):
    for i in range(5):
        await notify(client, token(), {"event": f"e{i}", "payload": {}})
    services = client.app[SERVICES]
    keep_three = NotificationService(
        services.storage, services.notifications.bus, NotificationsConfig(history_size=3)
    )
    keep_all = NotificationService(
        services.storage, services.notifications.bus, NotificationsConfig(history_size=0)
    )

    assert await keep_all.trim() == 0
    assert await keep_three.trim() == 2
    assert await keep_three.trim() == 0
    rows = await services.storage.fetch("SELECT event FROM notifications ORDER BY id")
    assert [r["event"] for r in rows] == ["e2", "e3", "e4"]
