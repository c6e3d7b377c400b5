"""Client frames: replies echo the id; bad input gets an error frame and the socket stays."""

from __future__ import annotations

import pytest

from server import codec
from server.errors import Unavailable
from server.keys import BUS, HUB
from server.ws import frames


async def test_ping_pong_echoes_the_id(connect):
    ws = await connect()
    pong = await ws.request({"type": "ping", "id": "p1"})
    assert (pong["type"], pong["id"]) == ("pong", "p1")
    assert "id" not in await ws.request({"type": "ping"})


async def test_subscribe_and_unsubscribe(client, connect):
    ws = await connect()
    sub = await ws.request({"type": "subscribe", "id": 3, "channel": "sensors:5"})
    assert sub["type"] == "subscribed"
    assert (sub["id"], sub["channel"], sub["offset"]) == (3, "sensors:5", 0)
    assert sub["epoch"] == (await client.app[BUS].position("sensors:5")).epoch
    await client.app[BUS].publish(["sensors:5"], "event", {"data": "x"})
    assert (await ws.recv_type("event"))["data"] == "x"
    unsub = await ws.request({"type": "unsubscribe", "id": 4, "channel": "sensors:5"})
    assert (unsub["type"], unsub["id"], unsub["channel"]) == ("unsubscribed", 4, "sensors:5")
    await client.app[BUS].publish(["sensors:5"], "event", {"data": "y"})
    await ws.nothing()
    assert "sensors:5" not in client.app[HUB].channels


async def test_subscribing_twice_is_a_conflict(connect):
    ws = await connect()
    err = await ws.request({"type": "subscribe", "id": 1, "channel": "general"})
    assert (err["type"], err["code"], err["id"]) == ("error", "conflict", 1)


async def test_subscribing_is_not_checked_against_existing_entities(connect):
    ws = await connect()
    sub = await ws.request({"type": "subscribe", "channel": "readings:424242"})
    assert (sub["type"], sub["channel"]) == ("subscribed", "readings:424242")


async def test_forbidden_subscribe_keeps_the_socket(connect):
    ws = await connect()
    err = await ws.request({"type": "subscribe", "id": "s", "channel": "user:bob"})
    assert (err["type"], err["code"], err["id"]) == ("error", "forbidden", "s")
    assert (await ws.request({"type": "ping"}))["type"] == "pong"


async def test_token_channels_claim_narrows_subscriptions(client, token):
    from tests.conftest import open_ws

    tok = token("user", sub="u1", channels=["sensors:*"])
    ws = await open_ws(client, f"/api/v1/ws?token={tok}&channel=sensors:1")
    assert (await ws.request({"type": "subscribe", "channel": "general"}))["code"] == "forbidden"
    ok = await ws.request({"type": "subscribe", "channel": "sensors:2"})
    assert ok["type"] == "subscribed"


BAD_FRAMES = [
    ("{not json", "invalid_json", None),
    ("[1, 2]", "bad_request", None),
    ('"text"', "bad_request", None),
    ('{"id": 5}', "unknown_type", 5),
    ('{"type": "nope", "id": "n"}', "unknown_type", "n"),
    ('{"type": 12}', "unknown_type", None),
    ('{"type": "subscribe", "id": 1}', "bad_request", 1),
    ('{"type": "subscribe", "channel": 7, "id": 2}', "bad_request", 2),
    ('{"type": "subscribe", "channel": "UPPER"}', "bad_request", None),
    ('{"type": "subscribe", "channel": "' + "a" * 129 + '"}', "bad_request", None),
    (
        '{"type": "subscribe", "channel": "x", "since": {"offset": "1", "epoch": "e"}}',
        "bad_request",
        None,
    ),
    (
        '{"type": "subscribe", "channel": "x", "since": {"offset": -1, "epoch": "e"}}',
        "bad_request",
        None,
    ),
    ('{"type": "subscribe", "channel": "x", "since": 5}', "bad_request", None),
    ('{"type": "unsubscribe"}', "bad_request", None),
    ('{"type": "publish", "channel": "general"}', "bad_request", None),
    ('{"type": "request", "id": 9}', "bad_request", 9),
    ('{"type": "request", "id": 9, "resource": "nope", "action": "list"}', "bad_request", 9),
    ('{"type": "ping", "id": [1]}', "bad_request", None),
    ('{"type": "ping", "id": 1e400}', "invalid_json", None),
]


@pytest.mark.parametrize(("raw", "code", "frame_id"), BAD_FRAMES)
async def test_bad_frames_get_an_error_and_the_socket_stays_usable(connect, raw, code, frame_id):
    ws = await connect()
    await ws.send(raw)
    err = await ws.recv_type("error")
    assert err["code"] == code, err
    assert err.get("id") == frame_id
    assert err["message"]
    assert (await ws.request({"type": "ping", "id": "after"}))["id"] == "after"


async def test_validation_errors_name_the_field(connect):
    ws = await connect()
    err = await ws.request({"type": "subscribe", "id": 1})
    assert err["details"] == {"channel": ["Missing data for required field."]}


async def test_binary_frames_are_refused_politely(connect):
    ws = await connect()
    await ws.ws.send_bytes(b"\x00\x01")
    err = await ws.recv_type("error")
    assert err["code"] == "bad_request"
    assert (await ws.request({"type": "ping"}))["type"] == "pong"


async def test_unknown_fields_are_ignored_for_forward_compatibility(connect):
    ws = await connect()
    pong = await ws.request({"type": "ping", "id": 1, "future": True})
    assert pong["type"] == "pong"


async def test_client_publish_is_refused_where_the_namespace_does_not_allow_it(connect):
    ws = await connect()
    err = await ws.request({"type": "publish", "id": 1, "channel": "general", "data": {"a": 1}})
    assert (err["code"], err["id"]) == ("forbidden", 1)


async def test_client_publish_where_allowed_reaches_subscribers_and_is_acknowledged(make_client):
    from tests.conftest import open_ws

    client = await make_client({"channels": {"namespaces": {"lobby": {"publish": ["anonymous"]}}}})
    sender = await open_ws(client, "/api/v1/ws?channel=lobby")
    reader = await open_ws(client, "/api/v1/ws?channel=lobby")
    await sender.send({"type": "publish", "id": "m1", "channel": "lobby", "data": {"text": "hi"}})
    # The sender is subscribed too: the live event goes out during the publish, the ack after.
    own = await sender.recv_type("event")
    assert own["data"] == {"text": "hi"}
    ack = await sender.recv_type("response")
    assert ack["id"] == "m1"
    epoch = (await client.app[BUS].position("lobby")).epoch
    assert ack["data"] == {"channel": "lobby", "offset": 1, "epoch": epoch}
    event = await reader.recv_type("event")
    assert (event["channel"], event["offset"], event["data"]) == ("lobby", 1, {"text": "hi"})


async def test_frames_are_handled_in_order(connect):
    ws = await connect()
    for i in range(20):
        await ws.send({"type": "ping", "id": i})
    assert [(await ws.recv())["id"] for _ in range(20)] == list(range(20))


def test_error_codes_outside_the_frame_vocabulary_go_out_as_internal():
    frame = codec.loads(frames.error(Unavailable("database unavailable"), id=7))
    assert (frame["code"], frame["message"], frame["id"]) == ("internal", "database unavailable", 7)
