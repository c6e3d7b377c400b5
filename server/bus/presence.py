"""This instance's presence: members per channel, with how many of their sockets are here.

The bus keeps the table (synchronously, so a socket is counted before its first await);
the backend announces and, with Redis, shares it with the other instances.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Member:
    """One user on a presence channel, however many sockets (tabs) they have there.

    `key` is the identity (Connection.member_id: anonymous labels are prefixed, so they
    never merge with a token's user); `user_id` is what clients are shown."""

    user_id: str
    username: str
    sockets: int = 0
    key: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            self.key = self.user_id

    def public(self) -> dict[str, str]:
        return {"user_id": self.user_id, "username": self.username}


class PresenceTable:
    """channel -> member id -> Member; bounded by the sockets this instance holds."""

    def __init__(self) -> None:
        self.channels: dict[str, dict[str, Member]] = {}

    def count(self, channel: str, member_id: str, label: str, name: str) -> Member:
        """`member_id` is the identity (Member.key), `label` what clients see as user_id."""
        members = self.channels.get(channel)
        if members is None:
            # A presence channel (a chat room) comes to life with its first local socket.
            members = self.channels[channel] = {}
            log.info(
                "room created %s", channel, extra={"event": "room_created", "channel": channel}
            )
        member = members.get(member_id)
        if member is None:
            member = members[member_id] = Member(label, name, key=member_id)
        member.sockets += 1
        return member

    def uncount(self, channel: str, member_id: str) -> Member | None:
        """The Member with one socket fewer (0: it left this instance); None if unknown."""
        members = self.channels.get(channel)
        member = members.get(member_id) if members else None
        if members is None or member is None:
            return None
        member.sockets -= 1
        if member.sockets <= 0:
            del members[member_id]
            if not members:
                del self.channels[channel]
                log.info(
                    "room removed %s", channel, extra={"event": "room_removed", "channel": channel}
                )
        return member

    def members(self, channel: str) -> list[Member]:
        return list(self.channels.get(channel, {}).values())

    def entries(self) -> list[tuple[str, Member]]:
        return [(ch, m) for ch, members in self.channels.items() for m in members.values()]
