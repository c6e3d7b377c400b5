"""GET /api/v1/sse: the hub's publications as Server-Sent Events (SPEC §5), a hub transport.

A publication is framed once per channel as an SSE event (`id`, `event`, `data`: the same
JSON as the WebSocket frame), cached on the publication, and those bytes go to every stream
on that channel through the same outbox and outbound budget as a socket. The event id names
the stream's position on each of its channels (`channel/epoch/offset`, comma-separated);
`Last-Event-ID` or `?last_event_id=` resumes after it exactly like `subscribe.since`. A stream
on one channel shares the publication's bytes; one on several writes its own id line (its
position on the other channels too), so only those pay per delivery.

The body is chunked (HTTP/1.1): the stream writes its chunks to the transport itself, one per
outbox flush, like a socket's frames. Streams have no read loop: the request's protocol feeds
what the peer sends (nothing) to a PeerWatch, as it does a WebSocket's reader, so a peer
that goes away ends its stream at once; the connection is not reused after a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from typing import Any

from aiohttp import web
from marshmallow import ValidationError

from server import codec
from server.api.middleware import bearer_token
from server.auth import Principal
from server.bus import Framing, Position, Publication
from server.channel_names import parse_channel_list
from server.errors import ApiError, Conflict, Forbidden, Unavailable, ValidationFailed
from server.hub import Hub
from server.hub.connection import CLOSE_POLICY, Connection, client_key
from server.keys import AUTH, CONFIG, DISPATCHER, HUB, POLICY, SSE_STREAMS
from server.ws import expiry
from server.ws.commands import SNAPSHOT_NAMESPACES, validate_max_rate
from server.ws.endpoint import CLIENT_ID_RE, DEFAULT_CHANNEL, client_ip, origin_allowed

log = logging.getLogger(__name__)

# Milliseconds an EventSource waits before it reconnects.
RETRY_MS = 3000
OPENING = b"retry: %d\n\n" % RETRY_MS
KEEPALIVE = b": keepalive\n\n"
HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    # nginx and the like would buffer the stream otherwise.
    "X-Accel-Buffering": "no",
}
# One channel's part of an event id: `channel/epoch/offset`. Neither a channel name nor an
# epoch (local: hex; Redis: hex, or `instance-hex` after an outage) holds `/`, `,` or a space.
_PART = re.compile(r"([^/,\s]+)/([^/,\s]*)/(\d{1,18})")


def _position_part(channel: str, epoch: str, offset: int) -> bytes:
    return f"{channel}/{epoch}/{offset}".encode()


def _sse_event(pub: Publication, channel: str) -> bytes:
    payload = pub.payload(channel)
    if pub.ephemeral:
        # Presence and typing have no position: the stream's last id stays.
        return b"event: %b\ndata: %b\n\n" % (pub.type.encode(), payload)
    part = _position_part(channel, pub.epochs[channel], pub.offsets[channel])
    return b"id: %b\nevent: %b\ndata: %b\n\n" % (part, pub.type.encode(), payload)


# The event of a publication on a channel, for every stream on that one channel.
SSE_FRAMING = Framing("sse", _sse_event)


def parse_event_id(value: str) -> dict[str, Position] | None:
    """An id this server wrote -> channel -> position; None when it is not one."""
    out: dict[str, Position] = {}
    for part in value.strip().split(","):
        match = _PART.fullmatch(part.strip())
        if match is None:
            return None
        channel, epoch, offset = match.groups()
        out[channel] = Position(int(offset), epoch)
    return out or None


class PeerWatch:
    """In place of aiohttp's payload parser: ignores what the peer sends and ends the
    stream when the connection is lost."""

    def __init__(self, conn: SseConnection) -> None:
        self.conn = conn

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        return False, b""

    def feed_eof(self) -> None:
        self.conn.lost()


class SseConnection(Connection):
    """A Server-Sent Events response as a hub connection."""

    __slots__ = ("_positions", "corked", "ended", "starts")

    framing = SSE_FRAMING
    chunked = True

    def __init__(self, transport: asyncio.Transport, *args: Any, channels: int) -> None:
        super().__init__(transport, *args)
        # Resolved when the stream is over: True when it ended cleanly (EOF chunk to send).
        self.ended: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        # channel -> the `since` it resumes from (what a `subscribed` id names if recovered).
        self.starts: dict[str, Position] = {}
        # channel -> (epoch, offset) delivered last: a stream on several channels names
        # them all in each id. A stream on one channel shares the publication's own bytes.
        self._positions: dict[str, tuple[str, int]] = {}
        self.direct = channels == 1
        # Until every channel is registered nothing goes out: `retry` then means "you are
        # subscribed" even when a subscription waits on the bus or a snapshot.
        self.corked = True

    def flush(self) -> bool:
        if self.corked:
            return not self.closing
        return super().flush()

    def uncork(self) -> None:
        self.corked = False
        self.flush()

    def deliver(self, pub: Publication, channel: str) -> bool:
        if self.direct or pub.ephemeral:
            return super().deliver(pub, channel)
        positions = self._positions
        for name in pub.channels:
            if name in positions:
                positions[name] = (pub.epochs[name], pub.offsets[name])
        head = b"id: %b\n" % self._event_id()
        event = pub.framed(SSE_FRAMING, channel)
        # The shared event without its own id line: the stream's id replaces it.
        return self.write(head + event[event.index(b"\n") + 1 :], b"")

    def passed(self, pub: Publication, channel: str) -> None:
        if channel in self._positions:
            self._positions[channel] = (pub.epochs[channel], pub.offsets[channel])

    def _event_id(self) -> bytes:
        return b",".join(_position_part(ch, e, o) for ch, (e, o) in self._positions.items())

    def frame_reply(self, payload: bytes) -> bytes:
        frame = codec.loads(payload)
        kind = str(frame.get("type", "message")).encode()
        if kind == b"subscribed":
            channel = frame["channel"]
            start = self.starts.get(channel)
            if frame.get("recovered") and start is not None:
                self._positions[channel] = (start.epoch, start.offset)
            else:
                self._positions[channel] = (frame["epoch"], frame["offset"])
            return b"id: %b\nevent: subscribed\ndata: %b\n\n" % (self._event_id(), payload)
        return b"event: %b\ndata: %b\n\n" % (kind, payload)

    def keepalive(self) -> None:
        if self._transport.is_closing():
            self.lost()
        else:
            self.write(KEEPALIVE, b"")

    def lost(self) -> None:
        self.closing = True
        if not self.ended.done():
            self.ended.set_result(False)

    def _close(self, code: int, reason: str) -> None:
        if code == CLOSE_POLICY:
            # A slow consumer: what it has not taken is dropped at once, with the stream.
            self._transport.abort()
        if not self.ended.done():
            self.ended.set_result(code != CLOSE_POLICY)


def _query_flag(query: Any, name: str) -> bool:
    value = query.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise ValidationFailed("invalid query", {name: ["must be true or false"]})
    return value in ("true", "1")


def _admit(request: web.Request) -> tuple[Principal, str, list[str], dict[str, Any]]:
    """Query and permissions, before anything is sent: a refusal is a plain HTTP error."""
    app = request.app
    query = request.query
    if not origin_allowed(request):
        raise Forbidden(f"origin {request.headers.get('Origin')} is not allowed")
    principal = app[AUTH].resolve(
        bearer_token(request, query), query.get("user_id"), query.get("username")
    )
    try:
        channels = parse_channel_list(query.getall("channel", [])) or [DEFAULT_CHANNEL]
    except ApiError as exc:
        raise ValidationFailed("invalid query", {"channel": [exc.message]}) from None
    client_id = query.get("client_id") or secrets.token_hex(8)
    if not CLIENT_ID_RE.fullmatch(client_id):
        raise ValidationFailed("invalid query", {"client_id": ["[A-Za-z0-9_-]{1,64}"]})
    options: dict[str, Any] = {"snapshot": _query_flag(query, "snapshot"), "max_rate": None}
    if "max_rate" in query:
        try:
            options["max_rate"] = float(query["max_rate"])
            validate_max_rate(options["max_rate"])
        except ValueError:
            raise ValidationFailed(
                "invalid query", {"max_rate": ["max_rate must be > 0 and <= 1000"]}
            ) from None
        except ValidationError as exc:
            raise ValidationFailed("invalid query", {"max_rate": exc.messages}) from None
    if options["snapshot"]:
        for channel in channels:
            ns, _, ident = channel.partition(":")
            if ns not in SNAPSHOT_NAMESPACES or not ident.isdigit():
                raise ValidationFailed(
                    "invalid query",
                    {"snapshot": ["offered on readings:{sensor_id} and sensors:{id} channels"]},
                )
    for channel in channels:
        if not app[POLICY].can_read(principal, channel):
            raise Forbidden(f"not allowed: {channel}")
    hub = app[HUB]
    limits = app[CONFIG].ws
    ip = client_ip(request)
    if limits.max_connections and len(hub.clients) >= limits.max_connections:
        raise Unavailable("too many connections")
    if limits.max_connections_per_ip and hub.per_ip[ip] >= limits.max_connections_per_ip:
        raise Unavailable("too many connections from this address")
    if client_key(principal, client_id) in hub.clients:
        raise Conflict("duplicate client_id")
    return principal, client_id, channels, options


async def sse(request: web.Request) -> web.StreamResponse:
    principal, client_id, channels, options = _admit(request)
    last_id = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    resume: dict[str, Position] | None = None
    if last_id:
        # An id that is not ours resumes nothing: every channel says recovered: false.
        resume = parse_event_id(last_id) or {ch: Position(0, "") for ch in channels}
    app = request.app
    hub = app[HUB]
    response = web.StreamResponse(headers=HEADERS)
    # Nothing else may follow a stream on its connection (see PeerWatch).
    response.force_close()
    await response.prepare(request)
    # The headers alone, through aiohttp's writer; the stream's own chunks follow on the
    # same transport.
    await response.write(b"")
    transport = request.transport
    assert transport is not None
    conn = _register(hub, transport, principal, client_id, request, len(channels))
    conn.write(OPENING, b"")
    if request.protocol is not None:
        request.protocol.set_parser(PeerWatch(conn))  # type: ignore[arg-type]
    # A token that expires ends the stream (cleanly: EventSource comes back with a new one).
    expiry.arm(conn, app[CONFIG].auth.jwt_leeway)
    streams = app[SSE_STREAMS]
    streams.add(conn)
    log.info("sse connect %s user=%s channels=%s", client_id, principal.sub, channels)
    try:
        dispatcher = app[DISPATCHER]
        for channel in channels:
            since = resume.get(channel) if resume is not None else None
            if since is not None:
                conn.starts[channel] = since
            await dispatcher.join(
                conn, channel, since, None, options["snapshot"], max_rate=options["max_rate"]
            )
        conn.uncork()
        clean = await conn.ended
    finally:
        expiry.disarm(conn)
        streams.discard(conn)
        await hub.remove(conn)
    if clean:
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
    log.info("sse disconnect %s", client_id)
    return response


def _register(
    hub: Hub,
    transport: asyncio.Transport,
    principal: Principal,
    client_id: str,
    request: web.Request,
    channels: int,
) -> SseConnection:
    limits = request.app[CONFIG].ws
    conn = SseConnection(
        transport,
        client_id,
        principal,
        client_ip(request),
        limits.max_queue_bytes,
        None,
        hub.on_drop,
        hub.outbox,
        limits.max_backlog_bytes,
        channels=channels,
    )
    hub.add(conn)
    return conn


async def keepalive(streams: set[SseConnection], interval: float) -> None:
    """One loop for every stream: a comment line each `sse.keepalive` seconds, which also
    finds the streams whose peer is gone."""
    while True:
        await asyncio.sleep(interval)
        for conn in list(streams):
            conn.keepalive()
