"""Real server processes: an instance killed with SIGKILL leaves presence (user_left from
the survivor), and two instances behind a real HAProxy, round robin, no sticky sessions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server.auth import Authenticator
from server.config import AuthConfig
from tests.cluster.conftest import Instance
from tests.cluster.processes import HAProxy, ServerProcess
from tests.conftest import WS
from tests.redis_util import require_redis


def redis_section(instance: Instance, presence_ttl: float = 30) -> dict[str, Any]:
    url = require_redis()
    return instance.overrides(url, presence_ttl)


@pytest.fixture
def servers(tmp_path: Path):
    started: list[ServerProcess] = []

    def make(name: str, overrides: dict[str, Any]) -> ServerProcess:
        server = ServerProcess(tmp_path, name, overrides)
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


async def ws_open(session: aiohttp.ClientSession, url: str) -> WS:
    ws = WS(await session.ws_connect(url))
    hello = await ws.recv_type("connection")
    for _ in hello["subscriptions"]:
        await ws.recv_type("subscribed")
    return ws


async def test_a_killed_instance_leaves_presence_within_presence_ttl(
    instance: Instance, servers, tmp_path: Path
):
    doomed = servers("doomed", redis_section(instance, presence_ttl=1))
    survivor = await instance(presence_ttl=1)
    async with aiohttp.ClientSession() as session:
        alice = WS(
            await session.ws_connect(f"http://127.0.0.1:{doomed.port}/ws/lobby?user_id=alice")
        )
        await alice.recv_type("connection")
        bob = await _join(survivor, "bob")
        assert sorted(m["user_id"] for m in bob.presence) == ["alice", "bob"]
        doomed.kill()
        # Announced by the survivor's presence job, within presence_ttl and a pass or two.
        left = await bob.ws.recv_type("user_left", timeout=15)
        assert left["data"]["user_id"] == "alice"
        resp = await survivor.get("/api/v1/rooms/lobby/connections")
        assert [u["user_id"] for u in (await resp.json())["users"]] == ["bob"]


class _Joined:
    def __init__(self, ws: WS, presence: list[dict[str, Any]]) -> None:
        self.ws = ws
        self.presence = presence


async def _join(client, user: str) -> _Joined:
    ws = WS(await client.ws_connect(f"/ws/lobby?user_id={user}"))
    await ws.recv_type("connection")
    await ws.recv_type("connected")
    sub = await ws.recv_type("subscribed")
    return _Joined(ws, sub.get("presence", []))


async def whoami(ws: WS) -> str:
    await ws.send({"type": "request", "id": "who", "resource": "stats", "action": "get"})
    while True:
        frame = await ws.recv()
        if frame["type"] == "response" and frame["id"] == "who":
            return str(frame["data"]["instance"])


async def test_successive_connections_through_haproxy_land_on_different_instances_and_recover(
    instance: Instance, servers, tmp_path: Path
):
    section = redis_section(instance)
    one = servers("one", section)
    two = servers("two", section)
    proxy = HAProxy(tmp_path, [one.port, two.port])
    proxy.start()
    try:
        base = f"http://127.0.0.1:{proxy.port}"
        async with aiohttp.ClientSession() as session:
            first = await ws_open(session, f"{base}/api/v1/ws?channel=feed")
            landed = await whoami(first)
            token = _service_token(tmp_path)
            headers = {"Authorization": f"Bearer {token}"}
            resp = await session.post(f"{base}/api/v1/events/feed", json={"n": 1}, headers=headers)
            assert resp.status == 202
            seen = await first.recv_type("event")
            await first.close()
            for n in (2, 3):
                resp = await session.post(
                    f"{base}/api/v1/events/feed", json={"n": n}, headers=headers
                )
                assert resp.status == 202
            since = {"offset": seen["offset"], "epoch": seen["epoch"]}
            for _ in range(4):  # round robin: another instance within a few connections
                second = await ws_open(session, f"{base}/api/v1/ws?channel=general")
                if await whoami(second) != landed:
                    break
                await second.close()
            else:
                raise AssertionError("every connection landed on the same instance")
            await second.send({"type": "subscribe", "channel": "feed", "since": since})
            sub = await second.recv_type("subscribed")
            assert sub["recovered"] is True
            got = [await second.recv_type("event") for _ in range(2)]
            assert [(f["data"]["n"], f["offset"]) for f in got] == [(2, 2), (3, 3)]
    finally:
        proxy.stop()


def _service_token(workdir: Path) -> str:
    """A token minted with the instances' shared secret (var/jwt_secret beside the configs)."""
    return Authenticator(AuthConfig(), workdir / "var", workdir).mint("svc", "service")
