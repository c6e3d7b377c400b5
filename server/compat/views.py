"""Shared pieces of the seed views: who is connected, in the shapes seed clients read."""

from __future__ import annotations

from server.api.stats_view import StatsView, connected_at
from server.hub import Hub
from server.services.chat import room_of

__all__ = ["connected_at", "rooms"]


def rooms(hub: Hub, view: StatsView) -> dict[str, dict[str, int]]:
    """room -> {connections, users}, from the hub's presence on chat channels (the rooms
    the caller may read)."""
    out: dict[str, dict[str, int]] = {}
    for channel, members in sorted(hub.presence.items()):
        room = room_of(channel)
        if room is not None and view.channel(channel):
            sockets = sum(m.sockets for m in members.values())
            out[room] = {"connections": sockets, "users": len(members)}
    return out
