"""Identities that cannot be borrowed: an anonymous `?user_id=` label never merges with or
acts as the authenticated user of the same id (presence, chat authorship, receipts, stats),
client ids are scoped to their principal, tokens expire on open sockets and `refresh`
extends them, and login attempts are limited."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.keys import AUTH, HUB, SERVICES
from tests.api.test_system import error_of
from tests.conftest import WS, auth_header, eventually, open_ws

# Close deadlines are generous: the machine is shared; nothing asserts elapsed time.
CLOSE_DEADLINE = 20.0


def mint(client: TestClient, sub: str, role: str = "user", **kw: Any) -> str:
    return str(client.app[AUTH].mint(sub, role, **kw))


async def room(client: TestClient, query: str) -> WS:
    return await open_ws(client, f"/ws/lobby?{query}")


# -- presence, chat authorship, receipts --------------------------------------------------------


async def test_anonymous_label_and_token_user_are_two_members(client: TestClient):
    real = await room(client, f"token={mint(client, '1', name='Ana')}")
    fake = await open_ws(client, "/ws/lobby?user_id=1&username=Ana", handshake=False)
    await fake.recv_type("connection")
    await fake.recv_type("connected")
    subscribed = await fake.recv_type("subscribed")

    joined = await real.recv_type("user_joined")

    # Both show "1" (seed 002's clients keep their label), as two members, not one.
    assert subscribed["presence"] == [
        {"user_id": "1", "username": "Ana"},
        {"user_id": "1", "username": "Ana"},
    ]
    assert joined["data"] == {"user_id": "1", "username": "Ana"}
    members = await client.app[SERVICES].chat.members("lobby")
    assert sorted(m.key for m in members) == ["1", "anonymous:1"]

    # The anonymous label's typing reaches the real user 1: it is not "their own".
    await fake.send({"type": "typing", "is_typing": True})
    typing = await real.recv_type("typing")
    assert typing["data"] == {"user_id": "1", "username": "Ana", "is_typing": True}

    await fake.close()
    left = await real.recv_type("user_left")
    assert left["data"] == {"user_id": "1", "username": "Ana"}
    assert [m.key for m in await client.app[SERVICES].chat.members("lobby")] == ["1"]


async def test_anonymous_label_never_authors_or_reads_as_the_user(client: TestClient):
    real = await room(client, f"token={mint(client, '1')}")
    fake = await room(client, "user_id=1")
    await real.recv_type("user_joined")

    await fake.send({"type": "message", "id": "f", "content": "from the label"})
    await fake.recv_type("message_sent")
    spoofed = (await real.recv_type("message"))["data"]
    await real.send({"type": "message", "id": "r", "content": "from the user"})
    await real.recv_type("message_sent")
    genuine = (await real.recv_type("message"))["data"]

    assert (spoofed["user_id"], spoofed["anonymous"]) == ("1", True)
    assert (genuine["user_id"], genuine["anonymous"]) == ("1", False)
    storage = client.app[SERVICES].storage
    rows = await storage.fetch("SELECT user_id, content FROM messages ORDER BY id")
    assert [(r["user_id"], r["content"]) for r in rows] == [
        ("anonymous:1", "from the label"),
        ("1", "from the user"),
    ]

    # Both read the user's message: two receipts, the user's own is not overwritten.
    for ws in (real, fake):
        await ws.send({"type": "read", "message_id": genuine["id"]})
    receipts = [(await real.recv_type("read_receipt"))["data"] for _ in range(2)]
    assert sorted((r["user_id"], r["anonymous"]) for r in receipts) == [
        ("1", False),
        ("1", True),
    ]
    rows = await storage.fetch("SELECT user_id FROM read_receipts ORDER BY user_id")
    assert [r["user_id"] for r in rows] == ["1", "anonymous:1"]


async def test_a_token_may_not_claim_the_anonymous_prefix(client: TestClient):
    ws = await open_ws(client, f"/api/v1/ws?token={mint(client, 'anonymous:1')}", handshake=False)
    code, reason = await ws.closed()
    assert code == 4001
    assert "sub may not start with" in reason


# -- stats ----------------------------------------------------------------------------------


async def test_anonymous_stats_show_no_authenticated_ids_nor_user_channels(client: TestClient):
    await open_ws(client, f"/api/v1/ws?channel=general,user:alice&token={mint(client, 'alice')}")
    await open_ws(client, "/api/v1/ws?channel=general&user_id=1")

    anonymous = await (await client.get("/api/v1/stats")).json()
    as_alice = await (
        await client.get("/api/v1/stats", headers=auth_header(mint(client, "alice")))
    ).json()
    seed004 = await (await client.get("/api/v1/ws/stats")).json()
    seed003 = await (await client.get("/stats")).json()
    private = await client.get("/api/v1/ws/stats/user:alice")

    assert anonymous["channels"] == {
        "general": {"channel": "general", "subscribers": 2, "users": ["1"]}
    }
    assert as_alice["channels"]["general"]["users"] == ["1", "alice"]
    assert as_alice["channels"]["user:alice"]["users"] == ["alice"]
    assert list(seed004["channels"]) == ["general"]
    assert sorted(str(u["user_id"]) for u in seed004["channels"]["general"]["users"]) == [
        "1",
        "None",
    ]
    shown = sorted((str(c["client_id"] is not None), str(c["user_id"])) for c in seed003["clients"])
    assert shown == [("False", "None"), ("True", "1")]
    await error_of(private, 403, "forbidden")


# -- client ids -----------------------------------------------------------------------------


async def test_replace_acts_only_within_the_same_principal(make_client: Any):
    client = await make_client({"ws": {"duplicate_client_id": "replace"}})
    alice = mint(client, "alice")
    victim = await open_ws(client, f"/api/v1/ws?client_id=dash&token={alice}")
    # Another user, and an anonymous socket, reuse the id: each gets a socket of its own.
    bob = await open_ws(client, f"/api/v1/ws?client_id=dash&token={mint(client, 'bob')}")
    anon = await open_ws(client, "/api/v1/ws?client_id=dash")
    for ws in (victim, bob, anon):
        assert (await ws.request({"type": "ping"}))["type"] == "pong"
    assert len(client.app[HUB].clients) == 3

    # The same user reconnecting with it replaces only their own socket.
    again = await open_ws(client, f"/api/v1/ws?client_id=dash&token={alice}")
    assert await victim.closed() == (4009, "replaced by a new connection")
    for ws in (again, bob, anon):
        assert (await ws.request({"type": "ping"}))["type"] == "pong"


async def test_reject_never_lets_anyone_squat_another_users_id(client: TestClient):
    squatter = await open_ws(client, "/api/v1/ws?client_id=dash")
    owner = await open_ws(client, f"/api/v1/ws?client_id=dash&token={mint(client, 'alice')}")
    twin = await open_ws(client, "/api/v1/ws?client_id=dash", handshake=False)

    assert (await owner.request({"type": "ping"}))["type"] == "pong"
    assert (await squatter.request({"type": "ping"}))["type"] == "pong"
    # Anonymous sockets share one scope: there the id is taken.
    assert await twin.closed() == (4009, "duplicate client_id")


# -- token expiry and refresh ------------------------------------------------------------------


@pytest.fixture
async def leeway_client(make_client: Any) -> TestClient:
    return await make_client({"auth": {"jwt_leeway": 1}})


async def test_socket_is_closed_when_its_token_expires(leeway_client: TestClient):
    client = leeway_client
    ws = await open_ws(client, f"/api/v1/ws?token={mint(client, 'ops', 'admin', ttl=1)}")
    assert (await ws.request({"type": "ping"}))["type"] == "pong"

    assert await ws.closed(timeout=CLOSE_DEADLINE) == (4001, "token expired")


async def test_refresh_extends_the_socket_for_the_same_sub(leeway_client: TestClient):
    client = leeway_client
    ws = await open_ws(client, f"/api/v1/ws?token={mint(client, 'ops', 'admin', ttl=1)}")
    fresh = mint(client, "ops", "admin", ttl=3600)

    reply = await ws.request({"type": "refresh", "id": 1, "token": fresh})

    assert (reply["type"], reply["id"], reply["data"]["sub"]) == ("response", 1, "ops")
    conn = next(iter(client.app[HUB].clients.values()))
    assert conn.principal.exp == reply["data"]["exp"]
    # The timer now fires at the new exp + leeway, about an hour away.
    assert conn.expiry is not None
    left = conn.expiry.when() - asyncio.get_running_loop().time()
    assert 3000 < left < 3700
    assert (await ws.request({"type": "ping"}))["type"] == "pong"


async def test_refresh_refusals_keep_the_socket(leeway_client: TestClient):
    client = leeway_client
    ws = await open_ws(client, f"/api/v1/ws?token={mint(client, 'ops', 'admin')}")
    anon = await open_ws(client, "/api/v1/ws")
    narrow = mint(client, "ops", "admin", channels=["sensors:*"])

    other = await ws.request({"type": "refresh", "id": 1, "token": mint(client, "eve", "admin")})
    bad = await ws.request({"type": "refresh", "id": 2, "token": "nope"})
    lost = await ws.request({"type": "refresh", "id": 3, "token": narrow})
    missing = await ws.request({"type": "refresh", "id": 4})
    anonymous = await anon.request({"type": "refresh", "id": 5, "token": narrow})

    assert (other["code"], other["id"]) == ("forbidden", 1)
    assert (bad["code"], bad["id"]) == ("unauthorized", 2)
    assert (lost["code"], lost["details"]) == ("forbidden", {"channels": ["general"]})
    assert (missing["code"], missing["details"]) == (
        "bad_request",
        {"token": ["Missing data for required field."]},
    )
    assert anonymous["code"] == "bad_request"
    assert (await ws.request({"type": "ping"}))["type"] == "pong"


async def test_closed_socket_cancels_its_expiry_timer(leeway_client: TestClient):
    client = leeway_client
    ws = await open_ws(client, f"/api/v1/ws?token={mint(client, 'ops', 'admin')}")
    conn = next(iter(client.app[HUB].clients.values()))
    timer = conn.expiry
    assert timer is not None

    await ws.close()
    await eventually(lambda: not client.app[HUB].clients, timeout=CLOSE_DEADLINE)

    assert timer.cancelled()
    assert conn.expiry is None


# -- login limits ------------------------------------------------------------------------------


async def add_user(client: TestClient, name: str) -> None:
    await client.app[SERVICES].users.add(name, "correct horse battery", "user")


async def test_login_is_limited_per_username(make_client: Any):
    client = await make_client({"auth": {"login_rate_per_user": 2, "login_rate_per_ip": 0}})
    await add_user(client, "alice")
    body = {"username": "alice", "password": "wrong password"}

    first = [(await client.post("/api/v1/auth/login", json=body)).status for _ in range(2)]
    limited = await client.post("/api/v1/auth/login", json={**body, "username": "ALICE"})
    other = await client.post("/api/v1/auth/login", json={**body, "username": "bob"})

    assert first == [401, 401]
    await error_of(limited, 429, "rate_limited")
    assert float(limited.headers["Retry-After"]) > 0
    assert other.status == 401


async def test_login_is_limited_per_address_and_aliased_for_seed_004(make_client: Any):
    client = await make_client({"auth": {"login_rate_per_ip": 2, "login_rate_per_user": 0}})
    await add_user(client, "alice")
    good = {"username": "alice", "password": "correct horse battery"}

    ok = await client.post("/auth/login", json=good)
    wrong = await client.post("/api/v1/auth/login", json={**good, "password": "nope nope"})
    limited = await client.post("/api/v1/auth/login", json={**good, "username": "carol"})

    assert ok.status == 200
    assert set(await ok.json()) == {"token", "expires_at"}
    assert wrong.status == 401
    await error_of(limited, 429, "rate_limited")
