"""WebSocket routes: handshake, query checks, limits, the read loop and close codes."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl

from aiohttp import WebSocketError, WSMessage, WSMsgType, web
from multidict import MultiDict

from server.api.middleware import bearer_token
from server.api.respond import error_response
from server.auth import Principal
from server.channel_names import parse_channel_list
from server.compat import Dialect
from server.errors import BadRequest, Forbidden, RateLimited, Unauthorized
from server.hub import Hub, HubStats, Member
from server.hub.connection import TokenBucket, client_key
from server.keys import AUTH, CONFIG, DISPATCHER, HUB, POLICY
from server.services.chat import check_room, room_channel
from server.ws import expiry, frames
from server.ws.socket import WsConnection, open_connection

log = logging.getLogger(__name__)

CLIENT_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
DEFAULT_CHANNEL = "general"
# A connection that keeps sending over its rate limit this long is closed with 4008.
FLOOD_GRACE_SECONDS = 5.0
# How long a closing handshake may wait for the peer's close frame.
CLOSE_TIMEOUT = 5.0


def origin_allowed(request: web.Request) -> bool:
    """Browsers send Origin; other clients don't and pass."""
    origin = request.headers.get("Origin")
    allowed = request.app[CONFIG].server.allowed_origins
    return origin is None or "*" in allowed or origin in allowed


def client_ip(request: web.Request) -> str:
    return request.remote or "unknown"


class Entry:
    """How a WebSocket route admits a socket: whether it needs a token, where its client_id
    and channels come from, and which protocol (dialect) it speaks. Seed routes
    (server.compat) are entries too."""

    token_required = False
    dialect: Dialect | None = None

    def client_id(self, request: web.Request, query: MultiDict[str]) -> str | None:
        return query.get("client_id")

    def channels(
        self, request: web.Request, query: MultiDict[str], principal: Principal
    ) -> list[str]:
        """Raises BadRequest for a bad name."""
        return parse_channel_list(query.getall("channel", [])) or [DEFAULT_CHANNEL]

    def greet(self, conn: WsConnection, hub: Hub, channels: list[str]) -> None:
        """Right after `connection` (the socket already counted in its channels' presence):
        anything more the route's clients expect first."""


class SecureEntry(Entry):
    token_required = True


class RoomEntry(Entry):
    """/ws/{room}: the room's chat channel first (what `connection.channel` names), then any
    `?channel=`s."""

    def channels(
        self, request: web.Request, query: MultiDict[str], principal: Principal
    ) -> list[str]:
        room = room_channel(check_room(request.match_info["room"]))
        extra = parse_channel_list(query.getall("channel", []))
        return [room, *(ch for ch in extra if ch != room)]


async def _serve(request: web.Request, entry: Entry) -> web.StreamResponse:
    """The route handler. Its frame lives as long as the socket, so it keeps few locals and
    leaves the handshake to `_open`, whose frame is gone once the socket is registered."""
    response, conn, channels = await _open(request, entry)
    if conn is None:
        return response
    hub = request.app[HUB]
    dispatcher = request.app[DISPATCHER]
    ws = conn.ws
    msg = None
    # Counted in these channels' presence at admission, not subscribed yet: if the socket
    # ends before it gets to them (a cancelled join), remove() uncounts them.
    unjoined = [channel for channel, _ in channels]
    try:
        for channel, member in channels:
            if member is not None:
                await hub.announce_joined(channel, member)
        while unjoined:
            # From here the join owns the count (and undoes it if it fails).
            await dispatcher.join(conn, unjoined.pop(0), counted=True)
        # The read loop lives here, not in a function of its own: one frame less per socket.
        while not conn.closing:
            # receive() rather than `async for`: no __anext__ frame either.
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT:
                if _within_rate(conn, hub.stats):
                    await dispatcher.handle(conn, msg.data)
            elif msg.type is WSMsgType.BINARY:
                if _within_rate(conn, hub.stats):
                    error = BadRequest("binary frames are not supported; send JSON text")
                    conn.send(frames.error(error))
            elif msg.type in _ENDS:
                break
    finally:
        expiry.disarm(conn)
        try:
            try:
                await hub.remove(conn, unjoined)
            finally:
                if conn.closer is not None:
                    await asyncio.shield(conn.closer)
                conn.abort_later(CLOSE_TIMEOUT)
        finally:
            # Even when aiohttp cancels the handler as the peer's TCP connection goes.
            _log_disconnect(conn, msg)
    return response


def _log_disconnect(conn: WsConnection, last: WSMessage | None) -> None:
    code, by = _close_code(conn, conn.ws, last)
    duration = time.monotonic() - conn.connected_at
    log.info(
        "disconnect %s code=%s by=%s after %.1fs",
        conn.client_id,
        code,
        by,
        duration,
        extra={
            "event": "disconnect",
            "client_id": conn.client_id,
            "code": code,
            "closed_by": by,
            "duration_s": round(duration, 3),
        },
    )


def _close_code(
    conn: WsConnection, ws: web.WebSocketResponse, last: WSMessage | None
) -> tuple[int | None, str]:
    """The close code the socket ended with and who chose it. ws.close_code alone would
    name the peer's reply (1000 after our 1001) or 1006 when the peer left without one
    (after aiohttp's own 1009 for a frame over ws.max_message_bytes)."""
    if conn.close_code is not None:
        return conn.close_code, "server"
    if last is not None and last.type is WSMsgType.ERROR and isinstance(last.data, WebSocketError):
        return int(last.data.code), "server"
    return ws.close_code, "client"


def route(entry: Entry) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    return functools.partial(_serve, entry=entry)


websocket = route(Entry())
websocket_secure = route(SecureEntry())


class Refusal(Exception):
    """A socket refused after the handshake: closed with `code` and `reason`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


async def _open(
    request: web.Request, entry: Entry
) -> tuple[web.StreamResponse, WsConnection | None, list[tuple[str, Member | None]]]:
    """Handshake, then admission; a refused socket is closed with its code and reason."""
    config = request.app[CONFIG]
    if not origin_allowed(request):
        origin = request.headers.get("Origin")
        return error_response(Forbidden(f"origin {origin} is not allowed")), None, []
    ws = web.WebSocketResponse(
        heartbeat=config.ws.heartbeat or None,
        max_msg_size=config.ws.max_message_bytes,
        compress=config.ws.compression,
        timeout=CLOSE_TIMEOUT,
    )
    await ws.prepare(request)
    try:
        conn, channels = _admit(request, ws, entry)
    except Refusal as refusal:
        # Accept then close: browsers cannot read the status of a refused handshake.
        await ws.close(code=refusal.code, message=frames.close_reason(refusal.reason))
        return ws, None, []
    return ws, conn, channels


def _admit(
    request: web.Request, ws: web.WebSocketResponse, entry: Entry
) -> tuple[WsConnection, list[tuple[str, Member | None]]]:
    """Query checks and limits; registers the socket (counted in its channels' presence)
    and sends `connection`. Returns the channels to subscribe, each with the Member whose
    arrival is to be announced there."""
    app = request.app
    hub = app[HUB]
    limits = app[CONFIG].ws
    # Parsed here rather than via request.query, which would stay cached on the request
    # for the socket's whole life.
    query = MultiDict(parse_qsl(request.query_string, keep_blank_values=True))
    client_id = entry.client_id(request, query) or secrets.token_hex(8)
    if not CLIENT_ID_RE.fullmatch(client_id):
        raise Refusal(frames.CLOSE_BAD_REQUEST, "invalid client_id")
    token = bearer_token(request, query)
    if entry.token_required and not token:
        raise Refusal(frames.CLOSE_UNAUTHORIZED, "a token is required")
    try:
        principal = app[AUTH].resolve(token, query.get("user_id"), query.get("username"))
        channels = entry.channels(request, query, principal)
    except Unauthorized as exc:
        # The address, never the token.
        log.warning(
            "auth failure from %s on %s: %s",
            client_ip(request),
            request.path,
            exc.message,
            extra={"event": "auth_failure", "remote": client_ip(request)},
        )
        raise Refusal(frames.CLOSE_UNAUTHORIZED, exc.message) from None
    except BadRequest as exc:
        raise Refusal(frames.CLOSE_BAD_REQUEST, exc.message) from None
    for channel in channels:
        if not app[POLICY].can_read(principal, channel):
            raise Refusal(frames.CLOSE_FORBIDDEN, f"not allowed: {channel}")
    try:
        hub.check_limits(None, principal.anonymous, channels)
    except Forbidden as exc:
        hub.stats.closed_by_policy += 1
        raise Refusal(frames.CLOSE_POLICY, exc.message) from None

    ip = client_ip(request)
    if limits.max_connections and len(hub.clients) >= limits.max_connections:
        hub.stats.closed_by_policy += 1
        raise Refusal(frames.CLOSE_POLICY, "too many connections")
    if limits.max_connections_per_ip and hub.per_ip[ip] >= limits.max_connections_per_ip:
        hub.stats.closed_by_policy += 1
        raise Refusal(frames.CLOSE_POLICY, "too many connections from this address")
    # Client ids are per principal: only the same user's socket can be replaced or collide.
    existing = hub.clients.get(client_key(principal, client_id))
    if existing is not None:
        if limits.duplicate_client_id == "reject":
            raise Refusal(frames.CLOSE_DUPLICATE, "duplicate client_id")
        existing.close_soon(frames.CLOSE_DUPLICATE, "replaced by a new connection")

    rate = TokenBucket(limits.rate_limit, limits.rate_burst) if limits.rate_limit else None
    conn = open_connection(
        ws,
        client_id,
        principal,
        ip,
        limits.max_queue_bytes,
        rate,
        hub.on_drop,
        hub.outbox,
        limits.max_backlog_bytes,
    )
    conn.dialect = entry.dialect
    hub.add(conn)
    expiry.arm(conn, app[CONFIG].auth.jwt_leeway)
    counted = [(channel, hub.count_in(conn, channel)) for channel in channels]
    log.info(
        "connect %s user=%s ip=%s channels=%s",
        client_id,
        principal.sub,
        ip,
        channels,
        extra={
            "event": "connect",
            "client_id": client_id,
            "user": principal.sub,
            "remote": ip,
            "channels": channels,
        },
    )
    conn.send(
        frames.encode(
            "connection",
            status="connected",
            client_id=client_id,
            user=conn.user,
            subscriptions=channels,
            channel=channels[0],
            heartbeat_interval=limits.heartbeat,
        )
    )
    entry.greet(conn, hub, channels)
    # The caller subscribes them, after this frame: `connection` comes first on the wire.
    return conn, counted


def _within_rate(conn: WsConnection, stats: HubStats) -> bool:
    """Count a client frame; False when it is over the rate limit (answered or dropped)."""
    stats.messages_in += 1
    rate = conn.rate
    if rate is None:
        return True
    now = rate.clock()
    if rate.take(now):
        return True
    assert rate.limited_since is not None
    stats.rate_limited += 1
    if now - rate.limited_since >= FLOOD_GRACE_SECONDS:
        conn.drop("rate limit exceeded")
    else:
        retry = (1.0 - rate.tokens) / rate.rate
        conn.send(frames.error(RateLimited(retry_after=round(retry, 3))))
    return False


# What ends the read loop: the peer's close or ours, a dead connection, a protocol error.
_ENDS = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR})


async def close_all(app: web.Application) -> None:
    """on_shutdown: every socket gets 1001 and the closing handshakes run concurrently."""
    hub = app[HUB]
    conns = list(hub.clients.values())
    for conn in conns:
        conn.close_soon(frames.CLOSE_GOING_AWAY, "server shutting down")
    closers = [c.closer for c in conns if c.closer is not None]
    if closers:
        await asyncio.wait(closers, timeout=app[CONFIG].server.shutdown_timeout)
