"""Bounded state (SPEC §4): ws.max_subscriptions, the channels anonymous clients may open,
and the hub's tables back where they started after churn."""

from __future__ import annotations

import asyncio
import gc
import resource
from types import SimpleNamespace
from typing import Any

from server.auth import Principal
from server.hub import Hub
from server.hub.connection import Connection
from server.keys import AUTH, BUS, HUB
from server.ws.socket import WsConnection
from tests.conftest import eventually, open_ws

CYCLES = 10_000


async def test_max_subscriptions_refuses_with_an_error_and_keeps_the_socket(make_client):
    client = await make_client({"ws": {"max_subscriptions": 3}})
    ws = await open_ws(client, "/api/v1/ws?channel=a")
    for channel in ("b", "c"):
        assert (await ws.request({"type": "subscribe", "channel": channel}))["type"] == "subscribed"

    refused = await ws.request({"type": "subscribe", "id": 9, "channel": "d"})

    assert (refused["type"], refused["id"], refused["code"]) == ("error", 9, "forbidden")
    assert refused["details"] == {"max_subscriptions": 3}
    assert (await ws.request({"type": "ping"}))["type"] == "pong"
    await ws.request({"type": "unsubscribe", "channel": "a"})
    assert (await ws.request({"type": "subscribe", "channel": "d"}))["type"] == "subscribed"
    assert "d" in client.app[HUB].channels


async def test_too_many_channels_in_the_query_close_4008(make_client):
    client = await make_client({"ws": {"max_subscriptions": 3}})
    ws = await open_ws(client, "/api/v1/ws?channel=a,b,c,d", handshake=False)
    assert await ws.closed() == (4008, "at most 3 subscriptions per socket")
    assert client.app[HUB].clients == {}


async def test_anonymous_clients_open_a_bounded_number_of_channels(make_client):
    client = await make_client({"ws": {"max_anonymous_channels": 2}})
    hub = client.app[HUB]
    anon = await open_ws(client, "/api/v1/ws?channel=x1")
    assert (await anon.request({"type": "subscribe", "channel": "x2"}))["type"] == "subscribed"

    refused = await anon.request({"type": "subscribe", "id": 1, "channel": "x3"})
    assert (refused["type"], refused["code"]) == ("error", "forbidden")
    assert refused["details"] == {"max_anonymous_channels": 2}
    assert "x3" not in hub.channels

    # A token holder opens channels freely; joining an open channel creates nothing.
    tok = client.app[AUTH].mint("alice", "user")
    user = await open_ws(client, f"/api/v1/ws?channel=x3&token={tok}")
    assert (await anon.request({"type": "subscribe", "channel": "x3"}))["type"] == "subscribed"
    assert hub.anonymous_channels == {"x1", "x2"}

    # A channel nobody is on any more gives its place back.
    await anon.request({"type": "unsubscribe", "channel": "x1"})
    assert (await anon.request({"type": "subscribe", "channel": "x4"}))["type"] == "subscribed"
    late = await open_ws(client, "/api/v1/ws?channel=x5", handshake=False)
    assert (await late.closed())[0] == 4008
    assert (await anon.request({"type": "ping"}))["type"] == "pong"
    await user.close()


class _Transport:
    """Takes every write at once, like loopback."""

    def write(self, data: bytes) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (16384, 65536)

    def is_closing(self) -> bool:
        return False


def _socket(hub: Hub, i: int, principal: Principal) -> Connection:
    ws: Any = SimpleNamespace(
        _writer=SimpleNamespace(transport=_Transport()), compress=0, _closed=False, _closing=False
    )
    ip = f"10.{i % 7}.{i // 256 % 256}.{i % 256}"
    return WsConnection(ws, f"c{i}", principal, ip, 1 << 20, None, hub.on_drop, hub.outbox)


def _tables(hub: Hub) -> dict[str, int]:
    return {
        "clients": len(hub.clients),
        "per_ip": len(hub.per_ip),
        "channels": len(hub.channels),
        "anonymous_channels": len(hub.anonymous_channels),
        "presence": len(hub.presence),
        "lagging": len(hub.outbox.lagging),
    }


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


async def test_connect_disconnect_churn_leaves_the_tables_where_they_started(client):
    """10,000 sockets come (each on a shared channel, its own channel and a chat room with
    presence), get a publication, and go; in-process, without the network."""
    hub, bus = client.app[HUB], client.app[BUS]
    anonymous = Principal("anonymous", "anonymous")
    alice = Principal("alice", "user")
    start, rss = _tables(hub), _rss_kb()
    states = len(bus.backend.channels)
    for i in range(CYCLES):
        conn = _socket(hub, i, anonymous if i % 2 else alice)
        hub.add(conn)
        for channel in ("general", f"sensors:{i}", "chat:lobby"):
            await hub.subscribe(conn, channel)
        if i % 1000 == 0:
            assert len(hub.clients) == 1
            await bus.publish(["general", f"sensors:{i}"], "event", {"data": i})
            # The bus's upkeep job, which evicts the states of channels nobody is on.
            await bus.maintain()
        await hub.remove(conn)
    assert _tables(hub) == start
    assert hub.stats.connections_total == CYCLES
    await bus.maintain()
    assert len(bus.backend.channels) <= states + 12  # the 10 with history left
    await asyncio.sleep(0)  # the outbox's flush of the last `subscribed` frames
    del conn
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, Connection)]
    # Loosely: nothing per socket or per channel stays behind (10,000 would be many MB).
    assert _rss_kb() - rss < 32 * 1024


async def test_many_channels_held_at_once_all_go_when_their_sockets_do(client):
    hub = client.app[HUB]
    start = _tables(hub)
    anonymous = Principal("anonymous", "anonymous")
    conns = []
    for i in range(CYCLES):
        conn = _socket(hub, i, anonymous)
        hub.add(conn)
        await hub.subscribe(conn, f"readings:{i}")
        conns.append(conn)
    assert len(hub.channels) == CYCLES
    assert len(hub.anonymous_channels) == CYCLES  # the shipped ws.max_anonymous_channels
    for conn in conns:
        await hub.remove(conn)
    assert _tables(hub) == start


async def test_real_sockets_churn_leaves_the_tables_where_they_started(make_client):
    client = await make_client({"ws": {"max_connections_per_ip": 5}})
    hub = client.app[HUB]
    start = _tables(hub)
    for i in range(200):
        ws = await open_ws(client, f"/api/v1/ws?channel=general,chat:r{i % 3}&user_id=u{i}")
        await ws.close()
    # The server side of the last close may still be running: poll briefly.
    await eventually(lambda: _tables(hub) == start, timeout=10)
