"""One connection's transport-neutral state: subscriptions, outbound budget, inbound rate.

A transport (WebSocket in server.ws.socket, SSE in server.api.sse) subclasses Connection with
its framing of a publication (cached on the publication, the same bytes for every
connection of that transport) and its way of closing; the hub only sees this class.

Outbound: no await per connection. Frames are appended to its pending list and the Outbox
writes each connection's pending frames once per loop iteration, as one `transport.write`:
at a few publications per second that is one syscall per frame, under load many frames
share one. A connection whose peer takes less than that gets a backlog (the shared frame
bytes, not copies) and, only while it has one, a task that feeds it to the transport as the
peer reads (HA's writer task, for backed-up connections only).

Slow consumers are judged by lag, not by one burst (SPEC §4): past `max_queue_bytes` a
connection is lagging and the Outbox's one check a second decides (see Outbox); past
`max_backlog_bytes` it is dropped at once. A drop (4008 "slow consumer"; an SSE stream is
cut) releases the backlog at once; the close follows what the transport still holds, and
the transport is aborted shortly after the close.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from server.auth import ANONYMOUS_KEY_PREFIX
from server.config import ANONYMOUS

if TYPE_CHECKING:
    from server.auth import Principal
    from server.bus import Framing, Publication
    from server.compat import Dialect

log = logging.getLogger(__name__)

SLOW_CONSUMER = "slow consumer"
# Close codes the hub's side uses (SPEC §4); ws.frames names them all.
CLOSE_POLICY = 4008
CLOSE_GOING_AWAY = 1001
# Pending bytes that are written at once instead of at the end of the loop iteration.
FLUSH_BYTES = 16 * 1024
# How often the Outbox looks at lagging connections.
LAG_CHECK_SECONDS = 1.0


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
    """Sockets with frames pending, written out together at the end of this loop iteration;
    and the one hub-level check of sockets that are behind (no timer per socket).

    A socket whose outbound bytes pass its budget (`max_queue_bytes`) is "lagging". Once a
    second every lagging socket is looked at: back under its budget, it is fine again; its
    backlog smaller than at the last look, it is reading, however slowly, and its clock is
    reset; otherwise, behind and not draining for `max_lag` seconds, it is a slow consumer.
    So a reader that keeps up with its link is never dropped whatever the burst, one that
    stops reading is dropped `max_lag` (+ up to one check) seconds after passing its budget.
    """

    __slots__ = ("_dirty", "_timer", "lagging", "max_lag")

    def __init__(self, max_lag: float = 5.0) -> None:
        self._dirty: list[Connection] = []
        self.max_lag = max_lag
        # Bound: at most one entry per open socket; closed ones leave at the next check.
        self.lagging: set[Connection] = set()
        self._timer: asyncio.TimerHandle | None = None

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

    def lag(self, conn: Connection) -> None:
        """`conn` passed its budget: judge it at the next checks."""
        conn.lag_since = time.monotonic()
        conn.lag_mark = conn.buffered()
        self.lagging.add(conn)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(LAG_CHECK_SECONDS, self.check)

    def check(self) -> None:
        self._timer = None
        now = time.monotonic()
        for conn in list(self.lagging):
            if conn.closing:
                self.lagging.discard(conn)
                continue
            size = conn.buffered()
            if size <= conn.limit:
                self.lagging.discard(conn)
                conn.lag_since = None
            elif size < conn.lag_mark:
                conn.lag_mark, conn.lag_since = size, now
            else:
                conn.lag_mark = size
                if now - (conn.lag_since or now) >= self.max_lag:
                    self.lagging.discard(conn)
                    conn.drop(SLOW_CONSUMER)
        if self.lagging:
            self._timer = asyncio.get_running_loop().call_later(LAG_CHECK_SECONDS, self.check)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.lagging.clear()


class Connection:
    """What the hub writes to. Subclasses set `framing`, `frame_reply` and `_close`."""

    __slots__ = (
        "__weakref__",
        "_backlog",
        "_backlog_bytes",
        "_dialect",
        "_drainer",
        "_flush_at",
        "_high_water",
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
        "dedupe",
        "dedupe_until",
        "direct",
        "expiry",
        "hard_limit",
        "ip",
        "lag_mark",
        "lag_since",
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
        max_backlog_bytes: int = 0,
    ) -> None:
        self.client_id = client_id
        self.principal = principal
        self.ip = ip
        # The budget: more than this outbound, the connection is lagging (see Outbox).
        self.limit = max_queue_bytes
        # More than this outbound, it is dropped at once: memory is bounded even while
        # a stalled peer's lag is being judged.
        self.hard_limit = max(max_backlog_bytes, max_queue_bytes)
        self.lag_since: float | None = None
        self.lag_mark = 0
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
        # Not None also while `dedupe` is: the hub then delivers through its slow path.
        self.recovering: dict[str, list[Publication]] | None = None
        # channel -> what a state sent on joining covers (a chat room's history), skipped
        # when it arrives live shortly after the join, until dedupe_until.
        self.dedupe: dict[str, Callable[[Publication], bool]] | None = None
        self.dedupe_until = 0.0
        self._transport = transport
        # Past this many bytes in the transport, asyncio pauses the protocol: further
        # frames wait in the backlog (shared bytes, no copies) and a drain task feeds them
        # in as the peer reads. So what a dropped connection still holds in the transport
        # is small, complete frames, and its close follows them.
        self._high_water = transport.get_write_buffer_limits()[1]
        self._backlog: deque[bytes] | None = None
        self._backlog_bytes = 0
        self._drainer: asyncio.Task[None] | None = None
        self._outbox = outbox
        # Framed messages waiting for the outbox's flush, and their size; never more than
        # _flush_at bytes wait.
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

    def skip_covered(
        self, channels: dict[str, Callable[[Publication], bool]], seconds: float
    ) -> None:
        """Skip live publications those channels' join state already covered, for a while."""
        if self.dedupe is None:
            self.dedupe = {}
        self.dedupe.update(channels)
        self.dedupe_until = time.monotonic() + seconds
        if self.recovering is None:
            self.recovering = {}

    def covered(self, pub: Publication, channel: str) -> bool:
        """Whether the join state already sent `pub` (see skip_covered)."""
        dedupe = self.dedupe
        if dedupe is None:
            return False
        if time.monotonic() > self.dedupe_until:
            self.dedupe = None
            if not self.recovering:
                self.recovering = None
            return False
        covers = dedupe.get(channel)
        return covers is not None and covers(pub)

    def buffered(self) -> int:
        """Outbound bytes not yet taken by the kernel: the transport's, the backlog's and
        the pending frames'."""
        return self._transport.get_write_buffer_size() + self._backlog_bytes + self._pending_bytes

    def _sendable(self) -> bool:
        """Whether data may still go out: not closing, transport open (a transport adds its
        own conditions, such as no WebSocket data frame after a Close)."""
        return not (self.closing or self._transport.is_closing())

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
        """Write the pending frames as one write (or queue them behind the backlog), then
        judge the budget; False if dropped."""
        data = self._take_pending()
        if data is None:
            return not self.closing
        transport = self._transport
        if transport.is_closing():
            self.lost()
            return False
        if not self._sendable():
            return False
        backlog = self._backlog
        if backlog is not None:
            backlog.append(data)
            self._backlog_bytes += len(data)
            return self.judge()
        transport.write(data)
        size = transport.get_write_buffer_size()
        if size > self._high_water:
            # The peer takes less than we send: hold the next frames back here.
            self._backlog = deque()
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        elif size <= self.limit:
            return True
        return self.judge()

    def judge(self) -> bool:
        """Over the hard cap: dropped now; over the budget: lagging, judged by the outbox."""
        size = self.buffered()
        if size > self.hard_limit:
            self.drop(SLOW_CONSUMER)
            return False
        if size > self.limit and self.lag_since is None:
            self._outbox.lag(self)
        return True

    async def _drain(self) -> None:
        """Feed the backlog to the transport as the peer reads; ends when it is empty."""
        transport = self._transport
        protocol: Any = transport.get_protocol()
        backlog = self._backlog
        assert backlog is not None
        try:
            while self._sendable():
                # aiohttp's protocol: returns once the transport is below its low-water mark.
                await protocol._drain_helper()
                while backlog and self._sendable():
                    data = backlog.popleft()
                    self._backlog_bytes -= len(data)
                    transport.write(data)
                    if transport.get_write_buffer_size() > self._high_water:
                        break
                else:
                    # All fed, and the transport has room: frames go straight to it again.
                    if transport.get_write_buffer_size() <= self._high_water:
                        break
        except ConnectionError:
            pass
        finally:
            backlog.clear()
            self._backlog_bytes = 0
            if self._backlog is backlog:
                self._backlog = None
                self._drainer = None

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
        """Close with 4008 (policy) because of `reason`, and tell the hub (which logs it)."""
        if self.closing:
            return
        self.on_drop(self, reason)
        # What a dropped connection has not taken yet is not sent any more: released now.
        self._pending = None
        self._pending_bytes = 0
        self._release()
        self.close_soon(CLOSE_POLICY, reason)

    def _release(self) -> None:
        """Drop what waits behind the transport (the backlog)."""
        if self._backlog is not None:
            self._backlog.clear()
            self._backlog_bytes = 0

    def close_soon(self, code: int, reason: str) -> None:
        """Start closing; the transport's handler then ends and cleans up."""
        if self.closing:
            return
        self.close_code = code
        # Frames already accepted go out before the close; a backlog does not (it would
        # follow the close).
        data = self._take_pending()
        if data is not None and self._backlog is None and self._sendable():
            self._transport.write(data)
        self.closing = True
        self._release()
        self._close(code, reason)

    def abort_later(self, delay: float) -> None:
        """Once the close is done: what the transport still holds (a tail of whole frames
        and the close) gets `delay` s to reach the peer, then it is dropped instead of
        waiting for TCP to give up on a peer that never reads."""
        self._release()
        transport = self._transport
        if transport.get_write_buffer_size():
            asyncio.get_running_loop().call_later(delay, transport.abort)

    def _close(self, code: int, reason: str) -> None:
        raise NotImplementedError
