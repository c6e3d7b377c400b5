"""What one caller of a stats endpoint may see (native and seed stats alike).

Stats name channels, users and sockets, so they obey the one read check: a channel the
caller may not read (server.channels: another user's `user:{id}`, a restricted namespace)
is left out. An anonymous caller sees no authenticated user's id nor its socket's client
id; anonymous sockets' labels are public (anyone may set one) and stay visible, so seed
clients that list who is connected keep working.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from aiohttp import web

from server import codec
from server.api.middleware import request_principal
from server.auth import Principal
from server.channels import ChannelPolicy
from server.hub.connection import Connection
from server.keys import POLICY
from server.services.chat import room_channel


@dataclass(frozen=True, slots=True)
class StatsView:
    principal: Principal
    policy: ChannelPolicy

    def channel(self, channel: str) -> bool:
        return self.policy.can_read(self.principal, channel)

    def room(self, room: str) -> bool:
        return self.channel(room_channel(room))

    def shows(self, conn: Connection) -> bool:
        """Whether the socket's user id and client id may be shown."""
        return not self.principal.anonymous or conn.principal.anonymous

    def user_id(self, conn: Connection) -> str | None:
        """The socket's user: a token's subject, an anonymous label or `anonymous`."""
        return conn.principal.sub if self.shows(conn) else None

    def member(self, conn: Connection) -> str | None:
        """The socket's id in chat (an anonymous socket without a label: its client id)."""
        return conn.member_label if self.shows(conn) else None

    def client_id(self, conn: Connection) -> str | None:
        return conn.client_id if self.shows(conn) else None

    def users(self, conns: Iterable[Connection]) -> list[str]:
        """The distinct users shown among `conns`: one per identity (an anonymous label
        "1" and authenticated user "1" are two entries), by label."""
        seen = {
            (conn.principal.anonymous, conn.principal.sub) for conn in conns if self.shows(conn)
        }
        return sorted(sub for _, sub in seen)


def connected_at(conn: Connection) -> str:
    """When the socket connected, as wall-clock ISO time."""
    return codec.isotime(codec.utcnow() - timedelta(seconds=time.monotonic() - conn.connected_at))


def caller_view(request: web.Request) -> StatsView:
    """The caller's view; Unauthorized without a token when anonymous access is off."""
    return StatsView(request_principal(request), request.app[POLICY])
