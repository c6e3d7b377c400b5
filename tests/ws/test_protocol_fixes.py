"""Protocol correctness found in review (issue 14 §4): what goes out after a Close, close
reasons, the compressed sender, seed 001's idle timer, presence after a cancelled join,
and mass-drop logging."""

from __future__ import annotations

import asyncio
import base64
import gc
import logging
import os
import struct
from typing import Any
from urllib.parse import quote

from server.hub.connection import Connection
from server.keys import AUTH, BUS, HUB
from server.ws import frames
from tests.conftest import eventually, open_ws
from tests.ws.link import RawSocket


async def test_no_data_frame_follows_a_close_the_server_sent(make_client):
    # A budget big enough that nothing here is a slow consumer.
    client = await make_client({"ws": {"max_queue_bytes": 8 * 1024 * 1024}})
    raw = await RawSocket.open(client.host, client.port, "/api/v1/ws?channel=feed")
    hub, bus = client.app[HUB], client.app[BUS]
    await eventually(lambda: len(hub.channels.get("feed", ())) == 1)
    (conn,) = hub.clients.values()
    # The peer reads nothing for now: its transport fills up.
    for i in range(200):
        await bus.publish(["feed"], "event", {"data": i, "pad": "p" * 10_000})
    # Too big: aiohttp sends 1009 itself, then waits for the transport to drain. Only the
    # header is sent: unread bytes would make the server's close a reset.
    header = struct.pack("!BBQ", 0x81, 0x80 | 127, 70_000) + os.urandom(4)
    await asyncio.get_running_loop().sock_sendall(raw.sock, header)
    await eventually(lambda: conn.ws.closed)
    for i in range(5):
        await bus.publish(["feed"], "event", {"data": f"late {i}"})
    texts, code, _ = await raw.until_close()
    assert code == 1009
    assert all(b"late" not in t for t in texts)
    after: list[int] = []
    try:
        await raw.send(0x8, struct.pack("!H", 1000))
        while True:
            opcode, _ = await raw.frame()
            after.append(opcode)
    except ConnectionError:
        pass
    raw.close()
    assert after == []  # RFC 6455 §5.5.1: nothing after the Close frame


def test_close_reason_is_cut_on_a_character_boundary():
    for text in ("é" * 100, "a" + "é" * 100, "日本語" * 50, "x" * 200, "short"):
        cut = frames.close_reason(text)
        assert len(cut) <= 123
        assert text.startswith(cut.decode("utf-8"))
        assert len(cut) >= min(len(text.encode()), 121)


async def test_a_refusal_reason_with_non_ascii_text_is_valid_utf8(client):
    name = quote("a" + "é" * 100)
    raw = await RawSocket.open(client.host, client.port, f"/api/v1/ws?channel={name}")
    _, code, reason = await raw.until_close()  # decodes as UTF-8 or fails
    raw.close()
    assert code == 4400
    assert reason.startswith("invalid channel name 'aé")
    assert len(reason.encode()) <= 123


async def test_compressed_sender_survives_close_soon_clearing_its_queue(make_client):
    big = 64 * 1024 * 1024  # no slow-consumer drop in this test
    client = await make_client(
        {"ws": {"compression": True, "max_queue_bytes": big, "max_backlog_bytes": big}}
    )
    raw = await RawSocket.open(client.host, client.port, "/api/v1/ws?channel=feed", deflate=True)
    hub = client.app[HUB]
    await eventually(lambda: len(hub.channels.get("feed", ())) == 1)
    (conn,) = hub.clients.values()
    for i in range(100):
        pad = base64.b64encode(os.urandom(30_000)).decode()  # compresses poorly
        await client.app[BUS].publish(["feed"], "event", {"data": i, "pad": pad})
    sender = conn._sender
    assert sender is not None
    # The peer reads nothing: the sender ends up waiting for the transport to drain.
    protocol = conn.ws._writer.protocol  # type: ignore[union-attr]
    await eventually(lambda: protocol._paused, timeout=10)
    conn.close_soon(1000, "bye")
    # Now the peer reads: the transport drains and the sender resumes with its queue empty.
    _, code, _ = await raw.until_close()
    raw.close()
    assert code == 1000
    await asyncio.wait([sender], timeout=10)
    assert sender.done()
    assert not sender.cancelled()
    assert sender.exception() is None


def _connections() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, Connection))


async def test_seed001_idle_timer_does_not_keep_a_closed_socket_alive(make_client):
    client = await make_client({"compat": {"idle_timeout": 300}})
    before = _connections()
    tok = client.app[AUTH].mint("user789", "user")
    ws = await open_ws(client, "/ws", handshake=False, params={"token": tok})
    await ws.recv_type("event")
    assert _connections() == before + 1
    await ws.close()
    await eventually(lambda: client.app[HUB].clients == {})
    await eventually(lambda: _connections() <= before)


async def test_presence_keeps_no_ghost_when_a_join_is_cancelled_half_way(make_client):
    client = await make_client({"chat": {"history_on_join": 0}})
    hub, bus = client.app[HUB], client.app[BUS]
    real = bus.position

    async def position(channel: str) -> Any:
        if channel == "chat:a":
            raise asyncio.CancelledError  # as if the handler were cancelled right there
        return await real(channel)

    bus.position = position  # type: ignore[method-assign]
    ws = await open_ws(
        client, "/api/v1/ws?channel=chat:b,chat:a,chat:c&user_id=u1&username=U1", handshake=False
    )
    await ws.closed()
    await eventually(lambda: hub.clients == {})
    assert hub.presence == {}
    assert hub.channels == {}

    bus.position = real  # type: ignore[method-assign]
    other = await open_ws(client, "/api/v1/ws?channel=chat:c&user_id=u2&username=U2")
    assert hub.members("chat:c")[0].user_id == "u2"
    assert len(hub.members("chat:c")) == 1
    await other.close()


async def test_a_mass_drop_logs_one_warning_and_one_summary(client, caplog):
    sockets = [await open_ws(client) for _ in range(30)]
    hub = client.app[HUB]
    caplog.set_level(logging.INFO, logger="server")
    for conn in list(hub.clients.values()):
        conn.drop("rate limit exceeded")
    for ws in sockets:
        assert await ws.closed() == (4008, "rate limit exceeded")
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "rate limit exceeded" in warnings[0].getMessage()
    hub.drops.flush()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2
    assert "29 more" in warnings[1].getMessage()
    assert "29 rate limit exceeded" in warnings[1].getMessage()
