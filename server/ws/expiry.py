"""Token expiry on open sockets, and the `refresh {token}` frame (the Centrifugo model).

A socket authenticated by a JWT is closed with 4001 "token expired" once its `exp` plus
`auth.jwt_leeway` has passed, unless a `refresh` brought a newer token for the same `sub`
first. One `call_at` timer per such socket, re-armed by each refresh and cancelled when
the socket goes: nothing polls.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from marshmallow import fields, validate

from server.errors import BadRequest, Forbidden
from server.hub.connection import Connection
from server.ws import frames
from server.ws.commands import Frame, Session, command

EXPIRED = "token expired"


def arm(conn: Connection, leeway: float) -> None:
    """(Re)start the socket's expiry timer from its principal's `exp`; none without one."""
    disarm(conn)
    exp = conn.principal.exp
    if exp is None:
        return
    loop = asyncio.get_running_loop()
    # exp is wall-clock time; the loop's clock is monotonic: convert the time left.
    when = loop.time() + (exp + leeway - time.time())
    conn.expiry = loop.call_at(when, _expire, conn)


def disarm(conn: Connection) -> None:
    if conn.expiry is not None:
        conn.expiry.cancel()
        conn.expiry = None


def _expire(conn: Connection) -> None:
    conn.expiry = None
    conn.close_soon(frames.CLOSE_UNAUTHORIZED, EXPIRED)


class RefreshFrame(Frame):
    token = fields.String(required=True, validate=validate.Length(min=1))


@command("refresh", RefreshFrame)
async def refresh(session: Session, frame: dict[str, Any]) -> None:
    """A new token for the socket's user: checked like one given at connect, for the same
    `sub`, still allowed every channel the socket is on. Answered with its `exp`."""
    conn, dispatcher = session.conn, session.dispatcher
    current = conn.principal
    if current.anonymous:
        raise BadRequest("an anonymous socket has no token to refresh; reconnect with one")
    auth = dispatcher.auth
    assert auth is not None, "the app wires the Authenticator into the dispatcher"
    principal = auth.authenticate(frame["token"])  # Unauthorized when it is not valid
    if principal.sub != current.sub:
        raise Forbidden("the new token names another user (sub); reconnect to switch users")
    lost = [ch for ch in conn.subscriptions if not dispatcher.policy.can_read(principal, ch)]
    if lost:
        raise Forbidden(
            "the new token may not read every channel of this socket", {"channels": lost}
        )
    conn.principal = principal
    arm(conn, dispatcher.config.auth.jwt_leeway)
    session.reply("response", frame["id"], data={"sub": principal.sub, "exp": principal.exp})


COMMANDS = (refresh,)
