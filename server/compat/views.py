"""Shared pieces of the seed views: who is connected, in the shapes seed clients read."""

from __future__ import annotations

import time
from datetime import timedelta

from server import codec
from server.hub import Hub
from server.hub.connection import Connection
from server.services.chat import room_of


def connected_at(conn: Connection) -> str:
    """When the socket connected, as wall-clock ISO time."""
    return codec.isotime(codec.utcnow() - timedelta(seconds=time.monotonic() - conn.connected_at))


def rooms(hub: Hub) -> dict[str, dict[str, int]]:
    """room -> {connections, users}, from the hub's presence on chat channels."""
    out: dict[str, dict[str, int]] = {}
    for channel, members in sorted(hub.presence.items()):
        room = room_of(channel)
        if room is not None:
            sockets = sum(m.sockets for m in members.values())
            out[room] = {"connections": sockets, "users": len(members)}
    return out
