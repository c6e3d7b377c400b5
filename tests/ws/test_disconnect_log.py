"""The disconnect log line names the code the client got and who closed."""

from __future__ import annotations

import logging

import aiohttp
import pytest

from server.keys import HUB
from tests.conftest import eventually, open_ws


def _disconnects(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == "disconnect"]


async def test_frame_too_big_logs_1009_by_server_not_1006(make_client, caplog):
    caplog.set_level(logging.INFO, "server.ws.endpoint")
    client = await make_client({"ws": {"max_message_bytes": 256}})
    ws = await open_ws(client)
    await ws.send({"type": "ping", "pad": "x" * 1000})
    code, _ = await ws.closed()
    assert code == 1009
    await eventually(lambda: bool(_disconnects(caplog)))
    (record,) = _disconnects(caplog)
    assert (record.code, record.closed_by) == (1009, "server")


async def test_client_close_logs_the_clients_code(client, caplog):
    caplog.set_level(logging.INFO, "server.ws.endpoint")
    ws = await open_ws(client)
    await ws.ws.close(code=4321)
    await eventually(lambda: bool(_disconnects(caplog)))
    (record,) = _disconnects(caplog)
    assert (record.code, record.closed_by) == (4321, "client")


async def test_policy_close_logs_4008(make_client, caplog):
    caplog.set_level(logging.INFO, "server.ws.endpoint")
    client = await make_client({"ws": {"rate_limit": 1, "rate_burst": 1}})
    ws = await open_ws(client)
    conn = next(iter(client.app[HUB].clients.values()))
    conn.drop("test drop")
    msg = await ws.ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert msg.data == 4008
    await eventually(lambda: bool(_disconnects(caplog)))
    (record,) = _disconnects(caplog)
    assert (record.code, record.closed_by) == (4008, "server")


async def test_room_created_and_removed_are_logged(client, caplog):
    caplog.set_level(logging.INFO, "server.bus.presence")
    ws = await open_ws(client, "/ws/lobby")
    other = await open_ws(client, "/ws/lobby")
    await other.ws.close()
    await ws.ws.close()
    await eventually(lambda: not client.app[HUB].clients)
    events = [(r.event, r.channel) for r in caplog.records if hasattr(r, "channel")]
    assert events == [("room_created", "chat:lobby"), ("room_removed", "chat:lobby")]
