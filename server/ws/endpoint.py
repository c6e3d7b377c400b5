"""WebSocket routes: handshake, query checks, limits, the read loop and close codes."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time

from aiohttp import WSMsgType, web

from server.api.middleware import bearer_token
from server.auth import Principal
from server.channels import parse_channel_list
from server.errors import ApiError, BadRequest, Forbidden, RateLimited
from server.keys import AUTH, CONFIG, DISPATCHER, HUB, POLICY
from server.ws import frames
from server.ws.connection import Connection, TokenBucket

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


async def _refuse(ws: web.WebSocketResponse, code: int, reason: str) -> web.WebSocketResponse:
    # Accept then close: browsers cannot read the status of a refused handshake.
    await ws.close(code=code, message=reason.encode()[:120])
    return ws


async def websocket(request: web.Request) -> web.WebSocketResponse:
    return await _serve(request, token_required=False)


async def websocket_secure(request: web.Request) -> web.WebSocketResponse:
    return await _serve(request, token_required=True)


async def _serve(request: web.Request, token_required: bool) -> web.WebSocketResponse:
    app = request.app
    config = app[CONFIG]
    if not origin_allowed(request):
        raise Forbidden(f"origin {request.headers.get('Origin')} is not allowed")
    ws = web.WebSocketResponse(
        heartbeat=config.ws.heartbeat or None,
        max_msg_size=config.ws.max_message_bytes,
        compress=config.ws.compression,
        timeout=CLOSE_TIMEOUT,
    )
    await ws.prepare(request)
    hub = app[HUB]
    query = request.query

    client_id = query.get("client_id") or secrets.token_hex(8)
    if not CLIENT_ID_RE.fullmatch(client_id):
        return await _refuse(ws, frames.CLOSE_BAD_REQUEST, "invalid client_id")
    token = bearer_token(request)
    if token_required and not token:
        return await _refuse(ws, frames.CLOSE_UNAUTHORIZED, "a token is required")
    try:
        principal: Principal = app[AUTH].resolve(token, query.get("user_id"), query.get("username"))
    except ApiError as exc:
        return await _refuse(ws, frames.CLOSE_UNAUTHORIZED, exc.message)
    try:
        channels = parse_channel_list(query.getall("channel", [])) or [DEFAULT_CHANNEL]
    except BadRequest as exc:
        return await _refuse(ws, frames.CLOSE_BAD_REQUEST, exc.message)
    policy = app[POLICY]
    for channel in channels:
        if not policy.can_subscribe(principal, channel):
            return await _refuse(ws, frames.CLOSE_FORBIDDEN, f"not allowed: {channel}")

    ip = client_ip(request)
    limits = config.ws
    if limits.max_connections and len(hub.clients) >= limits.max_connections:
        hub.stats.closed_by_policy += 1
        return await _refuse(ws, frames.CLOSE_POLICY, "too many connections")
    if limits.max_connections_per_ip and hub.per_ip[ip] >= limits.max_connections_per_ip:
        hub.stats.closed_by_policy += 1
        return await _refuse(ws, frames.CLOSE_POLICY, "too many connections from this address")
    existing = hub.clients.get(client_id)
    if existing is not None:
        if limits.duplicate_client_id == "reject":
            return await _refuse(ws, frames.CLOSE_DUPLICATE, "duplicate client_id")
        existing.close_soon(frames.CLOSE_DUPLICATE, "replaced by a new connection")

    rate = TokenBucket(limits.rate_limit, limits.rate_burst) if limits.rate_limit else None
    conn = Connection(ws, client_id, principal, ip, limits.max_queue_bytes, rate, hub.on_drop)
    hub.add(conn)
    started = time.monotonic()
    log.info("connect %s user=%s ip=%s channels=%s", client_id, principal.sub, ip, channels)
    try:
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
        for channel in channels:
            await hub.subscribe(conn, channel)
        await _read_loop(request, conn)
    finally:
        hub.remove(conn)
        if conn.closer is not None:
            await asyncio.shield(conn.closer)
        log.info(
            "disconnect %s code=%s after %.1fs",
            client_id,
            ws.close_code,
            time.monotonic() - started,
        )
    return ws


async def _read_loop(request: web.Request, conn: Connection) -> None:
    dispatcher = request.app[DISPATCHER]
    stats = request.app[HUB].stats
    rate = conn.rate
    async for msg in conn.ws:
        stats.messages_in += 1
        if msg.type is WSMsgType.TEXT:
            if rate is not None:
                now = time.monotonic()
                if not rate.take(now):
                    assert rate.limited_since is not None
                    if now - rate.limited_since >= FLOOD_GRACE_SECONDS:
                        conn.drop("rate limit exceeded")
                        break
                    retry = (1.0 - rate.tokens) / rate.rate
                    conn.send(frames.error(RateLimited(retry_after=round(retry, 3))))
                    continue
            await dispatcher.handle(conn, msg.data)
        elif msg.type is WSMsgType.BINARY:
            conn.send(frames.error(BadRequest("binary frames are not supported; send JSON text")))
        elif msg.type is WSMsgType.ERROR:
            break
        if conn.closing:
            break


async def close_all(app: web.Application) -> None:
    """on_shutdown: every socket gets 1001 and the closing handshakes run concurrently."""
    hub = app[HUB]
    conns = list(hub.clients.values())
    for conn in conns:
        conn.close_soon(frames.CLOSE_GOING_AWAY, "server shutting down")
    closers = [c.closer for c in conns if c.closer is not None]
    if closers:
        await asyncio.wait(closers, timeout=app[CONFIG].server.shutdown_timeout)
