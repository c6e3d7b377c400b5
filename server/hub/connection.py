"""One connection's transport-neutral state: subscriptions, outbound budget, inbound rate.

A transport (WebSocket in server.ws.socket, SSE in server.api.sse) subclasses Connection with
its framing of a publication (cached on the publication, the same bytes for every
connection of that transport) and its way of closing; the hub only sees this class.

Outbound: no task and no await per socket. Frames are appended to the socket's pending
list and the Outbox writes each socket's pending frames once per loop iteration, as one
`transport.write`: at a few publications per second that is one syscall per frame as
before, under load many frames share one. When the pending bytes plus what the transport
still buffers pass `max_queue_bytes`, the socket is a slow consumer and is closed with 4008
instead of slowing anyone else down (an SSE stream is cut).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from server.auth import ANONYMOUS_KEY_PREFIX
from server.config import ANONYMOUS

if TYPE_CHECKING:
    from server.auth import Principal
    from server.bus import Publication
    from server.compat import Dialect

log = logging.getLogger(__name__)

SLOW_CONSUMER = "slow consumer"
# Close codes the hub's side uses (SPEC §4); ws.frames names them all.
CLOSE_POLICY = 4008
CLOSE_GOING_AWAY = 1001
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


@dataclass(frozen=True, slots=True, eq=False)
class Framing:
    """A transport's framing of a publication on one channel: the bytes every connection
    of that transport gets, cached on the publication (Publication.framed)."""

    name: str
    encode: Callable[[Publication, str], bytes]


class Connection:
    """What the hub writes to. Subclasses set `framing`, `frame_reply` and `_close`."""

    __slots__ = (
        "_dialect",
        "_flush_at",
        "_outbox",
        "_pending",
        "_pending_bytes",
        "_transport",
        "client_id",
        "close_code",
        "closer",
        "closing",
        "conflated",
        "connected_at",
        "direct",
        "expiry",
        "ip",
        "limit",
        "on_drop",
        "principal",
        "rate",
        "recovering",
        "subscriptions",
    )

    framing: ClassVar[Framing]
    # HTTP chunked transfer coding around each write (an SSE response body).
    chunked: ClassVar[bool] = False

    def __init__(
        self,
        transport: asyncio.Transport,
        client_id: str,
        principal: Principal,
        ip: str,
        max_queue_bytes: int,
        rate: TokenBucket | None,
        on_drop: Callable[[Connection, str], None],
        outbox: Outbox,
    ) -> None:
        self.client_id = client_id
        self.principal = principal
        self.ip = ip
        self.limit = max_queue_bytes
        self.rate = rate
        self.on_drop = on_drop
        self.connected_at = time.monotonic()
        # A seed's protocol (server.compat), or None for the native one.
        self._dialect: Dialect | None = None
        # The transport's shared bytes of a publication can be written as they are: no
        # dialect to translate into, no bytes of its own per delivery (see `deliver`).
        self.direct = True
        self.closing = False
        # The code this server closed with (None: the peer closed first).
        self.close_code: int | None = None
        self.closer: asyncio.Task[Any] | None = None
        # The timer that closes the connection when its token expires (server.ws.expiry).
        self.expiry: asyncio.TimerHandle | None = None
        # channel -> first offset this connection receives there (live or recovered): a
        # publication also on another channel at or past that offset was already delivered.
        self.subscriptions: dict[str, int] = {}
        # channel -> max_rate, for the subscriptions the hub conflates.
        self.conflated: dict[str, float] | None = None
        # channel -> publications held back while that channel's recovery is under way.
        self.recovering: dict[str, list[Publication]] | None = None
        self._transport = transport
        self._outbox = outbox
        # Framed messages waiting for the outbox's flush, and their size; never more than
        # _flush_at bytes wait, so the budget is what the transport holds after a flush.
        self._pending: bytes | list[bytes] | None = None
        self._pending_bytes = 0
        self._flush_at = min(FLUSH_BYTES, max_queue_bytes)

    @property
    def dialect(self) -> Dialect | None:
        return self._dialect

    @dialect.setter
    def dialect(self, dialect: Dialect | None) -> None:
        self._dialect = dialect
        self.direct = dialect is None

    @property
    def compressed(self) -> bool:
        """Frames are compressed one by one, so never pre-joined (permessage-deflate)."""
        return False

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
        return self._transport.get_write_buffer_size() + self._pending_bytes

    def deliver(self, pub: Publication, channel: str) -> bool:
        """A publication on `channel`, in this transport's shared framing. A transport whose
        bytes differ per connection overrides this (and is then never `direct`)."""
        if self._dialect is not None:
            # Translated once per dialect and channel, not per socket.
            data = pub.translated(self._dialect, channel)
            if data is None:
                return not self.closing
            return self.write(self.frame_reply(data), data)
        return self.write(pub.framed(self.framing, channel), pub.payload(channel))

    def passed(self, pub: Publication, channel: str) -> None:
        """A recovered publication on `channel` not sent again: it already came through
        another channel. A transport that tracks positions itself (SSE ids) notes it."""

    def write(self, wire: bytes, payload: bytes) -> bool:
        """Queue a framed message without waiting; False if the socket is (now) dropped."""
        if self.closing:
            return False
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
            self.lost()
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
        data = pending if isinstance(pending, bytes) else b"".join(pending)
        if self.chunked:
            return b"%x\r\n%b\r\n" % (len(data), data)
        return data

    def send(self, payload: bytes) -> bool:
        """A frame for this connection only (replies, errors): framed here, same budget."""
        if self._dialect is not None:
            translated = self._dialect.encode(payload)
            if translated is None:
                return not self.closing
            payload = translated
        return self.write(self.frame_reply(payload), payload)

    def frame_reply(self, payload: bytes) -> bytes:
        """A frame's JSON in this transport's framing."""
        raise NotImplementedError

    def lost(self) -> None:
        """The peer is gone (found out on a write); a transport without a read loop ends
        its stream here."""

    def drop(self, reason: str) -> None:
        """Close with 4008 (policy) because of `reason`, and tell the hub."""
        if self.closing:
            return
        log.warning("closing %s (%s): %s", self.client_id, self.ip, reason)
        self.on_drop(self, reason)
        # What a dropped socket has not taken yet is not sent any more.
        self._pending = None
        self._pending_bytes = 0
        self.close_soon(CLOSE_POLICY, reason)

    def close_soon(self, code: int, reason: str) -> None:
        """Start closing; the transport's handler then ends and cleans up."""
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        # Frames already accepted go out before the close.
        data = self._take_pending()
        if data is not None and not self._transport.is_closing():
            self._transport.write(data)
        self._close(code, reason)

    def _close(self, code: int, reason: str) -> None:
        raise NotImplementedError
