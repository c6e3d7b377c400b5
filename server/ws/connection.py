"""One socket's state: subscriptions, outbound budget and inbound rate limit.

Outbound: no task and no await per socket. Frames are appended to the socket's pending
list and the Outbox writes each socket's pending frames once per loop iteration, as one
`transport.write`: at a few publications per second that is one syscall per frame as
before, under load many frames share one. When the pending bytes plus what the transport
still buffers pass `max_queue_bytes`, the socket is a slow consumer and is closed with 4008
instead of slowing anyone else down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from server.auth import ANONYMOUS_KEY_PREFIX
from server.config import ANONYMOUS
from server.ws import frames

if TYPE_CHECKING:
    from server.auth import Principal
    from server.bus import Publication
    from server.compat import Dialect

log = logging.getLogger(__name__)

SLOW_CONSUMER = "slow consumer"
# Pending bytes that are written at once instead of at the end of the loop iteration.
FLUSH_BYTES = 16 * 1024


def client_key(principal: Principal, client_id: str) -> str:
    """See Connection.client_key."""
    return client_id if principal.anonymous else f"{client_id}\t{principal.sub}"


class TokenBucket:
    """`rate` frames/s with bursts of `burst`; remembers since when the peer is over it.

    A peer stays "over its limit" while it gets refused at least once a second, so a flood
    that the refill lets through now and then still counts as one sustained flood.
    """

    __slots__ = ("burst", "clock", "last_refused", "limited_since", "rate", "tokens", "updated")

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        # Where `now` comes from: a test swaps it to drive the flood grace without waiting.
        self.clock = clock
        self.tokens = self.burst
        self.updated = clock()
        self.limited_since: float | None = None
        self.last_refused = 0.0

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            if self.limited_since is not None and now - self.last_refused > 1.0:
                self.limited_since = None
            return True
        if self.limited_since is None:
            self.limited_since = now
        self.last_refused = now
        return False


class Outbox:
    """Sockets with frames pending, written out together at the end of this loop iteration."""

    __slots__ = ("_dirty",)

    def __init__(self) -> None:
        self._dirty: list[Connection] = []

    def add(self, conn: Connection) -> None:
        if not self._dirty:
            asyncio.get_running_loop().call_soon(self.flush)
        self._dirty.append(conn)

    def flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            try:
                conn.flush()
            except Exception:
                # One broken socket must not keep the others from being written.
                log.exception("write to %s failed", conn.client_id)
                conn.drop("write failed")


class Connection:
    __slots__ = (
        "_compressed",
        "_flush_at",
        "_outbox",
        "_pending",
        "_pending_bytes",
        "_sender",
        "_transport",
        "client_id",
        "closer",
        "closing",
        "connected_at",
        "dialect",
        "expiry",
        "ip",
        "limit",
        "on_drop",
        "principal",
        "rate",
        "recovering",
        "subscriptions",
        "ws",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        client_id: str,
        principal: Principal,
        ip: str,
        max_queue_bytes: int,
        rate: TokenBucket | None,
        on_drop: Callable[[Connection, str], None],
        outbox: Outbox,
    ) -> None:
        self.ws = ws
        self.client_id = client_id
        self.principal = principal
        self.ip = ip
        self.limit = max_queue_bytes
        self.rate = rate
        self.on_drop = on_drop
        self.connected_at = time.monotonic()
        # A seed's protocol (server.compat), or None for the native one.
        self.dialect: Dialect | None = None
        self.closing = False
        self.closer: asyncio.Task[bool] | None = None
        # The timer that closes the socket when its token expires (server.ws.expiry).
        self.expiry: asyncio.TimerHandle | None = None
        # channel -> first offset this connection receives there (live or recovered): a
        # publication also on another channel at or past that offset was already delivered.
        self.subscriptions: dict[str, int] = {}
        # channel -> publications held back while that channel's recovery is under way.
        self.recovering: dict[str, list[Publication]] | None = None
        writer = ws._writer
        assert writer is not None, "connection made before the handshake"
        self._transport: asyncio.Transport = writer.transport
        # permessage-deflate frames are per socket: those go through aiohttp's writer, in order.
        self._compressed: deque[bytes] | None = deque() if ws.compress else None
        self._sender: asyncio.Task[None] | None = None
        self._outbox = outbox
        # Framed messages waiting for the outbox's flush, and their size; never more than
        # _flush_at bytes wait, so the budget is what the transport holds after a flush.
        self._pending: bytes | list[bytes] | None = None
        self._pending_bytes = 0
        self._flush_at = min(FLUSH_BYTES, max_queue_bytes)

    @property
    def compressed(self) -> bool:
        """permessage-deflate: frames are compressed one by one, so never pre-joined."""
        return self._compressed is not None

    @property
    def user(self) -> dict[str, Any]:
        return self.principal.public()

    @property
    def client_key(self) -> str:
        """The client id within its principal's scope: a client id is unique per
        authenticated user (anonymous sockets share one scope), so nobody can take over
        or squat another user's id. Anonymous: the client id itself; authenticated: the
        client id, a tab (never in a client id) and the token's subject."""
        return client_key(self.principal, self.client_id)

    @property
    def member_id(self) -> str:
        """Who this socket is in chat, presence and receipts (an identity key): the token's
        subject, or for an anonymous socket `anonymous:` + its label, so a `?user_id=1`
        never merges with, or acts as, authenticated user 1."""
        principal = self.principal
        if principal.anonymous:
            return ANONYMOUS_KEY_PREFIX + self.member_label
        return principal.sub

    @property
    def member_label(self) -> str:
        """The id this socket shows in chat and presence: the token's subject or the
        anonymous `user_id` label; an anonymous socket with neither shows its client id."""
        principal = self.principal
        if principal.anonymous and principal.sub == ANONYMOUS:
            return self.client_id
        return principal.sub

    @property
    def member_name(self) -> str:
        return self.principal.name or self.member_label

    def buffered(self) -> int:
        size = self._transport.get_write_buffer_size() + self._pending_bytes
        if self._compressed:
            size += sum(map(len, self._compressed))
        return size

    def write(self, wire: bytes, payload: bytes) -> bool:
        """Queue a framed message without waiting; False if the socket is (now) dropped."""
        if self.closing:
            return False
        if self._compressed is not None:
            self._compressed.append(payload)
            if len(self._compressed) == 1:
                self._sender = asyncio.get_running_loop().create_task(self._send_compressed())
            if self.buffered() > self.limit:
                self.drop(SLOW_CONSUMER)
                return False
            return True
        pending = self._pending
        if pending is None:
            # One frame is kept as the shared bytes object itself: no container per socket
            # per publication, so fan-out allocates nothing the GC has to track.
            self._pending = wire
            self._pending_bytes = len(wire)
            self._outbox.add(self)
        else:
            if isinstance(pending, bytes):
                self._pending = [pending, wire]
            else:
                pending.append(wire)
            self._pending_bytes += len(wire)
            if self._pending_bytes >= self._flush_at:
                # Enough for one efficient write: don't hold it back any longer.
                return self.flush()
        return True

    def flush(self) -> bool:
        """Write the pending frames as one write, then check the budget; False if dropped."""
        data = self._take_pending()
        if data is None:
            return not self.closing
        transport = self._transport
        if transport.is_closing():
            return False
        transport.write(data)
        # The transport sends what the kernel takes at once; the rest is the peer's backlog.
        if transport.get_write_buffer_size() > self.limit:
            self.drop(SLOW_CONSUMER)
            return False
        return True

    def _take_pending(self) -> bytes | None:
        pending = self._pending
        if pending is None:
            return None
        self._pending = None
        self._pending_bytes = 0
        return pending if isinstance(pending, bytes) else b"".join(pending)

    def send(self, payload: bytes) -> bool:
        """A frame for this socket only (replies, errors): framed here, same budget."""
        if self.dialect is not None:
            translated = self.dialect.encode(payload)
            if translated is None:
                return not self.closing
            payload = translated
        return self.write(frames.text_frame(payload), payload)

    async def _send_compressed(self) -> None:
        queue = self._compressed
        assert queue is not None
        try:
            while queue and not self.closing:
                await self.ws.send_frame(queue[0], WSMsgType.TEXT)
                queue.popleft()
        except (ConnectionError, RuntimeError):
            queue.clear()

    def drop(self, reason: str) -> None:
        """Close with 4008 (policy) because of `reason`, and tell the hub."""
        if self.closing:
            return
        log.warning("closing %s (%s): %s", self.client_id, self.ip, reason)
        self.on_drop(self, reason)
        # What a dropped socket has not taken yet is not sent any more.
        self._take_pending()
        self.close_soon(frames.CLOSE_POLICY, reason)

    def close_soon(self, code: int, reason: str) -> None:
        """Start the closing handshake; the endpoint's read loop then ends and cleans up."""
        if self.closing:
            return
        self.closing = True
        # Frames already accepted go out before the close frame.
        data = self._take_pending()
        if data is not None and not self._transport.is_closing():
            self._transport.write(data)
        if self._compressed:
            self._compressed.clear()
        # The endpoint awaits this task before it returns, which also keeps it referenced.
        self.closer = asyncio.get_running_loop().create_task(
            self.ws.close(code=code, message=reason.encode(), drain=False)
        )
