"""A joining socket gets a chat room's history, then live messages: none twice, none lost,
on SQLite and PostgreSQL.

On PostgreSQL a message can be committed (so in the history a joining socket reads) while
its publication is still on its way: its sender has not resumed yet, or it was stored by
another instance. Here that is made deterministic: stored first, announced after the join.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from server.config import Config
from server.keys import SERVICES
from tests.conftest import WS, Connect, make_config, open_ws
from tests.storage.conftest import Opener, backend, open_db, pg_server_url  # noqa: F401


@pytest.fixture(autouse=True)
def config(open_db: Opener, tmp_path: Path) -> Config:  # noqa: F811
    return make_config(tmp_path, {"database": {"url": open_db.url}})


async def until_pong(ws: WS) -> list[dict[str, Any]]:
    """Every frame up to the pong of a ping sent now: a fence instead of a sleep."""
    await ws.send({"type": "ping", "id": "fence"})
    seen = []
    while (frame := await ws.recv())["type"] != "pong":
        seen.append(frame)
    return seen


async def test_a_message_in_the_history_is_not_sent_again_live(client, connect: Connect):
    chat = client.app[SERVICES].chat
    stored = await chat.store_message("lobby", "bob", "Bob", "hello")  # not announced yet

    ws = await connect("/api/v1/ws?channel=chat:lobby&user_id=u1")
    history = await ws.recv_type("message")
    assert (history["history"], history["data"]["id"]) == (True, stored["id"])

    await chat.announce(stored)  # its publication arrives after the switch to live
    later = await chat.store_message("lobby", "bob", "Bob", "again")
    await chat.announce(later)

    frames = [f for f in await until_pong(ws) if f["type"] == "message"]
    assert [f["data"]["id"] for f in frames] == [later["id"]]
    assert "history" not in frames[0]


async def test_a_message_missing_from_the_history_still_arrives_live(make_client, config):
    client = await make_client({**_database(config), "chat": {"history_on_join": 1}})
    chat = client.app[SERVICES].chat
    first = await chat.store_message("lobby", "bob", "Bob", "one")  # older than the history
    second = await chat.store_message("lobby", "bob", "Bob", "two")

    ws = await open_ws(client, "/api/v1/ws?channel=chat:lobby&user_id=u1")
    assert (await ws.recv_type("message"))["data"]["id"] == second["id"]

    # Published after the join, in the other order (as two senders may resume).
    await chat.announce(first)
    await chat.announce(second)

    frames = [f for f in await until_pong(ws) if f["type"] == "message"]
    assert [f["data"]["id"] for f in frames] == [first["id"]]


def _database(config: Config) -> dict[str, Any]:
    return {"database": {"url": config.database.url}}
