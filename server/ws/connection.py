"""One socket's state: subscriptions, outbound budget and inbound rate limit.

Outbound: no await per socket. Frames are appended to the socket's pending list and the
Outbox writes each socket's pending frames once per loop iteration, as one
`transport.write`: at a few publications per second that is one syscall per frame, under
load many frames share one. A socket whose peer takes less than that gets a backlog (the
shared frame bytes, not copies) and, only while it has one, a task that feeds it to the
transport as the peer reads (HA's writer task, for backed-up sockets only).

Slow consumers are judged by lag, not by one burst (SPEC §4): past `max_queue_bytes` a
socket is lagging and the Outbox's one check a second decides (see Outbox); past
`max_backlog_bytes` it is dropped at once. A drop (4008 "slow consumer") releases the
backlog at once; the close frame follows what the transport still holds, and the endpoint
aborts the transport when the closing handshake is over.
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
# How often the Outbox looks at lagging sockets.
LAG_CHECK_SECONDS = 1.0


def client_key(principal: Principal, client_id: str) -> str:
    """See Connection.client_key."""
    return client_id if principal.anonymous else f"{client_id}\t{principal.sub}"


class TokenBucket:
    """`rate` frames/s with bursts of `burst`; remembers since when the peer is over it.

    A peer stays "over its limit" while it gets refused at least once a second, so a flood
    that the refill lets through now and then still counts as one sustained flood.
    """

    __slots__ = ("burst", "last_refused", "limited_since", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.tokens = self.burst
        self.updated = time.monotonic()
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
    __slots__ = (
        "__weakref__",
        "_backlog",
        "_backlog_bytes",
        "_compressed",
        "_compressed_bytes",
        "_drainer",
        "_flush_at",
        "_high_water",
        "_outbox",
        "_pending",
        "_pending_bytes",
        "_sender",
        "_transport",
        "client_id",
        "closer",
        "closing",
        "connected_at",
        "dedupe",
        "dedupe_until",
        "dialect",
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
        max_backlog_bytes: int = 0,
    ) -> None:
        self.ws = ws
        self.client_id = client_id
        self.principal = principal
        self.ip = ip
        # The budget: more than this outbound, the socket is lagging (see Outbox).
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
        self.dialect: Dialect | None = None
        self.closing = False
        self.closer: asyncio.Task[bool] | None = None
        # The timer that closes the socket when its token expires (server.ws.expiry).
        self.expiry: asyncio.TimerHandle | None = None
        # channel -> first offset this connection receives there (live or recovered): a
        # publication also on another channel at or past that offset was already delivered.
        self.subscriptions: dict[str, int] = {}
        # channel -> publications held back while that channel's recovery is under way.
        # Not None also while `dedupe` is: the hub then delivers through its slow path.
        self.recovering: dict[str, list[Publication]] | None = None
        # channel -> what a state sent on joining covers (a chat room's history), skipped
        # when it arrives live shortly after the join, until dedupe_until.
        self.dedupe: dict[str, Callable[[Publication], bool]] | None = None
        self.dedupe_until = 0.0
        writer = ws._writer
        assert writer is not None, "connection made before the handshake"
        self._transport: asyncio.Transport = writer.transport
        # Past this many bytes in the transport, asyncio pauses the protocol: further
        # frames wait in the backlog (shared bytes, no copies) and a drain task feeds them
        # in as the peer reads. So what a dropped socket still holds in the transport is
        # small, complete frames, and its close frame follows them.
        self._high_water = self._transport.get_write_buffer_limits()[1]
        self._backlog: deque[bytes] | None = None
        self._backlog_bytes = 0
        self._drainer: asyncio.Task[None] | None = None
        # permessage-deflate frames are per socket: those go through aiohttp's writer, in order.
        self._compressed: deque[bytes] | None = deque() if ws.compress else None
        self._compressed_bytes = 0
        self._sender: asyncio.Task[None] | None = None
        self._outbox = outbox
        # Framed messages waiting for the outbox's flush, and their size; never more than
        # _flush_at bytes wait.
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
        the pending or compressed frames'."""
        return (
            self._transport.get_write_buffer_size()
            + self._backlog_bytes
            + self._pending_bytes
            + self._compressed_bytes
        )

    def _sendable(self) -> bool:
        """Whether a data frame may still go out (see flush)."""
        ws = self.ws
        return not (self.closing or ws._closed or ws._closing or self._transport.is_closing())

    def write(self, wire: bytes, payload: bytes) -> bool:
        """Queue a framed message without waiting; False if the socket is (now) dropped."""
        if self.closing:
            return False
        if self._compressed is not None:
            if not self._sendable():
                return False
            self._compressed.append(payload)
            self._compressed_bytes += len(payload)
            if self._sender is None:
                self._sender = asyncio.get_running_loop().create_task(self._send_compressed())
            return self._judge()
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
        ws, transport = self.ws, self._transport
        # No data frame after a Close (RFC 6455 §5.5.1): not ours, nor one aiohttp sent
        # itself (a 1009, a missed pong), nor once the peer's arrived.
        if self.closing or ws._closed or ws._closing or transport.is_closing():
            return False
        backlog = self._backlog
        if backlog is not None:
            backlog.append(data)
            self._backlog_bytes += len(data)
            return self._judge()
        transport.write(data)
        size = transport.get_write_buffer_size()
        if size > self._high_water:
            # The peer takes less than we send: hold the next frames back here.
            self._backlog = deque()
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        elif size <= self.limit:
            return True
        return self._judge()

    def _judge(self) -> bool:
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
        writer = self.ws._payload_writer
        transport = self._transport
        backlog = self._backlog
        assert writer is not None
        assert backlog is not None
        try:
            while self._sendable():
                # Returns once the transport is below its low-water mark.
                await writer.drain()
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
            while queue and self._sendable():
                payload = queue.popleft()
                self._compressed_bytes -= len(payload)
                # close_soon may clear the queue while this awaits: nothing is popped after.
                await self.ws.send_frame(payload, WSMsgType.TEXT)
        except (ConnectionError, RuntimeError):
            pass
        finally:
            queue.clear()
            self._compressed_bytes = 0
            self._sender = None

    def drop(self, reason: str) -> None:
        """Close with 4008 (policy) because of `reason`, and tell the hub (which logs it)."""
        if self.closing:
            return
        self.on_drop(self, reason)
        # What a dropped socket has not taken yet is not sent any more: released now.
        self._take_pending()
        self._release()
        self.close_soon(frames.CLOSE_POLICY, reason)

    def _release(self) -> None:
        if self._backlog is not None:
            self._backlog.clear()
            self._backlog_bytes = 0
        if self._compressed:
            self._compressed.clear()
            self._compressed_bytes = 0

    def close_soon(self, code: int, reason: str) -> None:
        """Start the closing handshake; the endpoint's read loop then ends and cleans up."""
        if self.closing:
            return
        # Frames already accepted go out before the close frame; a backlog does not (it
        # would follow the close frame), nor what compression has not sent yet.
        data = self._take_pending()
        if data is not None and self._backlog is None and self._sendable():
            self._transport.write(data)
        self.closing = True
        self._release()
        # The endpoint awaits this task before it returns, which also keeps it referenced.
        self.closer = asyncio.get_running_loop().create_task(
            self.ws.close(code=code, message=frames.close_reason(reason), drain=False)
        )

    def abort_later(self, delay: float) -> None:
        """Once the closing handshake is over: what the transport still holds (a tail of
        whole frames and the close frame) gets `delay` s to reach the peer, then it is
        dropped instead of waiting for TCP to give up on a peer that never reads."""
        self._release()
        transport = self._transport
        if transport.get_write_buffer_size():
            asyncio.get_running_loop().call_later(delay, transport.abort)
