"""Connecting: the connection frame, query checks and the close codes of refusals."""

from __future__ import annotations

import pytest

from server.keys import HUB
from tests.conftest import open_ws


async def test_connection_frame_then_subscribed_for_each_query_channel(client):
    ws = await open_ws(
        client, "/api/v1/ws?channel=sensors,readings:42&client_id=dash-1", handshake=False
    )
    hello = await ws.recv_type("connection")
    assert hello["status"] == "connected"
    assert hello["client_id"] == "dash-1"
    assert hello["subscriptions"] == ["sensors", "readings:42"]
    assert hello["channel"] == "sensors"
    assert hello["heartbeat_interval"] == 20
    assert hello["user"] == {"id": "anonymous", "name": None, "role": "anonymous"}
    assert hello["timestamp"].endswith("Z")
    # Registered before the frame is sent: stats already count it.
    assert "dash-1" in client.app[HUB].clients
    for channel in ("sensors", "readings:42"):
        sub = await ws.recv_type("subscribed")
        epoch = (await client.app[HUB].bus.position(channel)).epoch
        assert (sub["channel"], sub["offset"], sub["epoch"]) == (channel, 0, epoch)
        assert "recovered" not in sub


async def test_repeated_channel_parameters_and_default_channel(client):
    ws = await open_ws(client, "/api/v1/ws?channel=a&channel=b,c&channel=a", handshake=False)
    assert (await ws.recv_type("connection"))["subscriptions"] == ["a", "b", "c"]
    plain = await open_ws(client, handshake=False)
    assert (await plain.recv_type("connection"))["subscriptions"] == ["general"]


async def test_generated_client_id_when_absent(client):
    ws = await open_ws(client, handshake=False)
    hello = await ws.recv_type("connection")
    assert len(hello["client_id"]) == 16
    assert hello["client_id"] in client.app[HUB].clients


async def test_anonymous_labels_come_from_the_query(client):
    ws = await open_ws(client, "/api/v1/ws?user_id=7&username=ana", handshake=False)
    assert (await ws.recv_type("connection"))["user"] == {
        "id": "7",
        "name": "ana",
        "role": "anonymous",
    }


async def test_token_identifies_the_user(client, token):
    tok = token("user", sub="u-9", name="Uma")
    ws = await open_ws(client, f"/api/v1/ws?token={tok}&channel=user:u-9", handshake=False)
    hello = await ws.recv_type("connection")
    assert hello["user"] == {"id": "u-9", "name": "Uma", "role": "user"}
    assert (await ws.recv_type("subscribed"))["channel"] == "user:u-9"


@pytest.mark.parametrize(
    ("query", "code", "reason"),
    [
        ("client_id=has%20space", 4400, "invalid client_id"),
        ("client_id=" + "x" * 65, 4400, "invalid client_id"),
        ("channel=Bad!", 4400, "invalid channel name"),
        ("channel=user:someone", 4003, "not allowed: user:someone"),
        ("token=not-a-jwt", 4001, "invalid token"),
    ],
)
async def test_refused_query_is_accepted_then_closed_with_a_code(client, query, code, reason):
    ws = await open_ws(client, f"/api/v1/ws?{query}", handshake=False)
    got_code, got_reason = await ws.closed()
    assert got_code == code
    assert reason in got_reason
    assert client.app[HUB].clients == {}


async def test_expired_token_closes_4001(client, token):
    ws = await open_ws(client, f"/api/v1/ws?token={token(ttl=-10)}", handshake=False)
    assert await ws.closed() == (4001, "token expired")


async def test_secure_endpoint_requires_a_token(client, token):
    ws = await open_ws(client, "/api/v1/ws/secure", handshake=False)
    assert await ws.closed() == (4001, "a token is required")
    ok = await open_ws(client, f"/api/v1/ws/secure?token={token('user')}", handshake=False)
    assert (await ok.recv_type("connection"))["user"]["role"] == "user"


async def test_bearer_header_works_like_the_token_parameter(client, token):
    ws = await open_ws(
        client,
        "/api/v1/ws/secure",
        handshake=False,
        headers={"Authorization": f"Bearer {token('device', sub='gw-1')}"},
    )
    assert (await ws.recv_type("connection"))["user"]["id"] == "gw-1"


async def test_without_anonymous_access_a_token_is_required(make_client):
    client = await make_client({"auth": {"allow_anonymous": False}})
    ws = await open_ws(client, handshake=False)
    assert await ws.closed() == (4001, "a token is required")


async def test_refused_origin_gets_403_before_the_upgrade(make_client):
    client = await make_client({"server": {"allowed_origins": ["https://ok.example"]}})
    resp = await client.get(
        "/api/v1/ws",
        headers={
            "Origin": "https://evil.example",
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
        },
    )
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "forbidden"
    good = await open_ws(client, handshake=False, origin="https://ok.example")
    assert (await good.recv_type("connection"))["status"] == "connected"
    # No Origin header: not a browser, passes.
    plain = await open_ws(client, handshake=False)
    assert (await plain.recv_type("connection"))["status"] == "connected"
