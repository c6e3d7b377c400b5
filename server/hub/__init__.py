"""Channel hub: which connections a publication reaches, framed once, the same bytes to each.

The hub is the bus's receiver. Per publication it resolves, per connection, the first of the
publication's channels that connection is subscribed to (so a connection on several of them
gets it exactly once), frames the payload once per such channel and transport (a WebSocket
frame, an SSE event: the connection's `framing`, cached on the publication) and writes the
bytes to every connection without awaiting any of them. Conflated subscriptions
(`max_rate`) go through the Conflator instead of the direct fan-out. A batch bigger than
BATCH_CHUNK publications is delivered a chunk at a time, yielding to the loop in between
(pings, reads and other sockets' writes run meanwhile); deliveries that arrive during one
wait behind it, so every connection still gets publications in publishing order.

Tables and their bounds (SPEC §4, bounded state):
- `clients`: one entry per open connection, at most `ws.max_connections`.
- `per_ip`: one counter per address with an open connection (deleted at 0), so at most
  `clients`; each at most `ws.max_connections_per_ip`. `transports`: one per transport.
- `channels`: channels with at least one subscriber (deleted when the last one leaves), at
  most `ws.max_connections` x `ws.max_subscriptions`; `anonymous_channels`, those anonymous
  connections created, at most `ws.max_anonymous_channels`.
- presence (the bus's table): per channel with presence, one Member per user with a
  connection there, at most the channel's subscribers.
- `outbox.lagging`: at most one entry per open connection; `drops`: one counter per reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from server import codec
from server.bus import Bus, Position, Publication, Recovery
from server.bus.presence import Member
from server.errors import Forbidden
from server.hub.conflation import Conflation, Conflator, newest_per_entity
from server.hub.connection import SLOW_CONSUMER, Connection, Outbox

log = logging.getLogger(__name__)

# Publications of one batch delivered between two yields to the loop (~200 KB of readings).
BATCH_CHUNK = 512
# Policy closes (slow consumers, floods) are logged once, then summed up per this window.
DROP_LOG_SECONDS = 10.0

# Who is subscribed where, as one delivery sees it: channel -> its sockets.
Subscribers = dict[str, set[Connection]] | dict[str, tuple[Connection, ...]]


@dataclass(frozen=True, slots=True)
class HubLimits:
    """The ws.* limits the hub enforces (0 = off)."""

    max_subscriptions: int = 0
    max_anonymous_channels: int = 0
    max_lag: float = 5.0


class DropLog:
    """A mass drop (a stalled network, a flood) logs one WARNING and one summary, not one
    line per socket: the first policy close of a window is logged, the rest are counted and
    summed up when the window ends."""

    __slots__ = ("_counts", "_timer")

    def __init__(self) -> None:
        # Bound: one counter per close reason.
        self._counts: Counter[str] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def record(self, conn: Connection, reason: str) -> None:
        if self._counts is None:
            log.warning("closing %s (%s): %s", conn.client_id, conn.ip, reason)
            self._counts = Counter()
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(DROP_LOG_SECONDS, self.flush)
            return
        log.debug("closing %s (%s): %s", conn.client_id, conn.ip, reason)
        self._counts[reason] += 1

    def flush(self) -> None:
        """End the window: one WARNING for the closes it counted after the first."""
        counts, self._counts = self._counts, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if counts:
            summary = ", ".join(f"{n} {reason}" for reason, n in counts.most_common())
            log.warning(
                "closed %d more sockets for policy in %.0f s: %s",
                counts.total(),
                DROP_LOG_SECONDS,
                summary,
            )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A channel's current state for a new subscriber: frames to send after `subscribed`,
    and which live publications that state already covers.

    `lingers`: state read from storage (a chat room's history) can hold what is still on
    its way to the bus (stored, not published yet); covered publications arriving in the
    first LINGER_SECONDS after the switch to live are skipped as well."""

    frames: list[bytes]
    covers: Callable[[Publication], bool]
    lingers: bool = False


# How long after a join live publications its stored state covered are still skipped.
LINGER_SECONDS = 5.0


@dataclass(slots=True)
class HubStats:
    connections_total: int = 0
    messages_in: int = 0
    messages_out: int = 0
    publications: int = 0
    dropped_slow_consumers: int = 0
    closed_by_policy: int = 0
    # Client frames refused by ws.rate_limit.
    rate_limited: int = 0
    # Namespace label -> publications / frames written (server.metrics reads them).
    published: dict[str, int] = field(default_factory=dict)
    delivered: dict[str, int] = field(default_factory=dict)


class Hub:
    def __init__(
        self,
        bus: Bus,
        presence_on: Callable[[str], bool] = lambda _: False,
        label: Callable[[str], str] = lambda _: "other",
        clock: Callable[[], float] = time.monotonic,
        limits: HubLimits = HubLimits(),
    ) -> None:
        self.bus = bus
        self.presence_on = presence_on
        self.limits = limits
        # channel -> its bounded namespace label for the counters (server.metrics).
        self.label = label
        # Called once per batch with seconds since its oldest publication was accepted.
        self.observe_latency: Callable[[float], None] | None = None
        self.clock = clock
        # channel -> connections that get its publications as published (not conflated).
        self.channels: dict[str, set[Connection]] = {}
        self.anonymous_channels: set[str] = set()
        self.conflator = Conflator(self._deliver_conflated, clock)
        # Connection.client_key (client_id within its principal's scope) -> its socket.
        self.clients: dict[str, Connection] = {}
        self.per_ip: Counter[str] = Counter()
        # transport (Framing.name: websocket, sse) -> open connections
        self.transports: Counter[str] = Counter()
        self.stats = HubStats()
        self.outbox = Outbox(limits.max_lag)
        self.drops = DropLog()
        # Deliveries waiting behind a batch that is being delivered chunk by chunk, each
        # with the subscribers it had when published; None when none is under way.
        self._queue: deque[tuple[list[Publication], Subscribers]] | None = None
        self._pump: asyncio.Task[None] | None = None
        self.started_at = time.monotonic()
        bus.on_publication.append(self.on_publication)
        bus.on_reset.append(self.on_reset)

    @property
    def presence(self) -> dict[str, dict[str, Member]]:
        """This instance's members per presence channel (the bus's table); the bus's
        `members` sees every instance."""
        return self.bus.presence.channels

    def close(self) -> None:
        self.outbox.close()
        self.drops.flush()

    # -- connections -------------------------------------------------------------------

    def add(self, conn: Connection) -> None:
        self.clients[conn.client_key] = conn
        self.per_ip[conn.ip] += 1
        self.transports[conn.framing.name] += 1
        self.stats.connections_total += 1

    async def remove(self, conn: Connection, counted: Iterable[str] = ()) -> None:
        """Forget a socket: its subscriptions and, if still registered as such, its client_id;
        then tell each presence channel its user left if this was their last socket there.
        `counted`: channels it was counted in (count_in) but never got to subscribe to.

        Everything before the first await happens at once, even if the caller is cancelled.
        """
        gone: list[tuple[str, Member]] = []
        for channel in (*conn.subscriptions, *counted):
            self._discard(channel, conn)
            member = self._leave(conn, channel)
            if member is not None:
                gone.append((channel, member))
        conn.subscriptions.clear()
        if self.clients.get(conn.client_key) is conn:
            del self.clients[conn.client_key]
        self.per_ip[conn.ip] -= 1
        if self.per_ip[conn.ip] <= 0:
            del self.per_ip[conn.ip]
        self.transports[conn.framing.name] -= 1
        for channel, member in gone:
            await self.bus.announce(channel, member, joined=False)

    def on_drop(self, conn: Connection, reason: str) -> None:
        """A socket closed for policy; the endpoint's cleanup removes it from the hub."""
        self.stats.closed_by_policy += 1
        if reason == SLOW_CONSUMER:
            self.stats.dropped_slow_consumers += 1
        self.drops.record(conn, reason)

    def _discard(self, channel: str, conn: Connection) -> None:
        conflated = conn.conflated
        if conflated is not None and channel in conflated:
            self.conflator.leave(conn, channel, conflated.pop(channel))
            if not conflated:
                conn.conflated = None
        else:
            subs = self.channels.get(channel)
            if subs is None:
                return
            subs.discard(conn)
            if subs:
                return
            del self.channels[channel]
        if channel not in self.channels and channel not in self.conflator.groups:
            self.anonymous_channels.discard(channel)
            self.bus.unlisten(channel)

    def check_limits(
        self, conn: Connection | None, anonymous: bool, channels: Sequence[str]
    ) -> None:
        """Forbidden when subscribing to `channels` would take a socket (`conn`, None for
        one being admitted) past ws.max_subscriptions, or make an anonymous one create more
        channels than ws.max_anonymous_channels."""
        limits = self.limits
        have = len(conn.subscriptions) if conn is not None else 0
        if limits.max_subscriptions and have + len(channels) > limits.max_subscriptions:
            raise Forbidden(
                f"at most {limits.max_subscriptions} subscriptions per socket",
                {"max_subscriptions": limits.max_subscriptions},
            )
        if anonymous and limits.max_anonymous_channels:
            names = self.channel_names()
            new = sum(1 for channel in channels if channel not in names)
            if new and len(self.anonymous_channels) + new > limits.max_anonymous_channels:
                raise Forbidden(
                    "anonymous clients may not open more channels now; use a token",
                    {"max_anonymous_channels": limits.max_anonymous_channels},
                )

    # -- subscriptions -----------------------------------------------------------------

    async def subscribe(
        self,
        conn: Connection,
        channel: str,
        since: Position | None = None,
        reply: dict[str, Any] | None = None,
        snapshot: Callable[[], Awaitable[Snapshot]] | None = None,
        counted: bool = False,
        max_rate: float | None = None,
    ) -> None:
        """Subscribe and answer `subscribed`; then, with `since`, the missed publications and,
        with `snapshot`, the current state; then live ones.

        Publications arriving while history or state is read are held back and sent after
        them, skipping what the history held or the snapshot covers: no gap, no duplicate.
        `counted`: the caller already counted (and announced) the socket's presence there;
        if this fails (or is cancelled) half-way, that count is undone here.
        Forbidden past ws.max_subscriptions or ws.max_anonymous_channels.
        `max_rate`: conflated; what `since` recovers is then the newest per entity (and
        every event that is not per entity), and live ones follow at most max_rate/s.
        """
        if not counted:
            self.check_limits(conn, conn.principal.anonymous, (channel,))
        if conn.principal.anonymous and channel not in self.channel_names():
            self.anonymous_channels.add(channel)
        if max_rate is None:
            self.channels.setdefault(channel, set()).add(conn)
        else:
            if conn.conflated is None:
                conn.conflated = {}
            conn.conflated[channel] = max_rate
            self.conflator.join(conn, channel, max_rate)
        held: list[Publication] = []
        if conn.recovering is None:
            conn.recovering = {}
        conn.recovering[channel] = held
        joined = None
        try:
            # Listening first: whatever is published from here on reaches `held`, so the
            # position or history read below leaves no gap before the live stream.
            await self.bus.listen(channel)
            if since is not None:
                recovery = await self.bus.recover(channel, since)
            else:
                recovery = Recovery([], False, await self.bus.position(channel))
            state = await snapshot() if snapshot is not None else None
            joined = None if counted else self._join(conn, channel)
            presence = await self.bus.members(channel) if self.presence_on(channel) else None
        except BaseException:
            self._discard(channel, conn)
            if counted or joined is not None:
                self._leave(conn, channel)
            raise
        finally:
            del conn.recovering[channel]
            if not conn.recovering and conn.dedupe is None:
                conn.recovering = None
        position = recovery.position
        recovered = recovery.recovered if since is not None else None
        conn.send(self._subscribed(channel, position, recovered, reply, presence))
        # Where this connection's stream on the channel starts: after `since` when the gap
        # was recovered, else at the current position.
        start = since.offset if since is not None and recovered else position.offset
        last = start
        missed = recovery.publications
        if missed:
            last = missed[-1].offsets[channel]
        later = [
            pub
            for pub in held
            # One from before a reset (an outage) is skipped: the position read is newer.
            if pub.epochs.get(channel) == position.epoch
            and pub.offsets[channel] > last
            and not (state is not None and state.covers(pub))
        ]
        if max_rate is not None:
            missed, later = newest_per_entity(missed), newest_per_entity(later)
        for pub in missed:
            if self._delivered_elsewhere(conn, pub, channel):
                conn.passed(pub, channel)
            else:
                conn.deliver(pub, channel)
        if state is not None:
            for frame in state.frames:
                conn.send(frame)
        conn.subscriptions[channel] = start + 1
        for pub in later:
            conn.deliver(pub, channel)
        if state is not None and state.lingers:
            conn.skip_covered({channel: state.covers}, LINGER_SECONDS)
        if joined is not None:
            await self.bus.announce(channel, joined, joined=True)

    @staticmethod
    def _delivered_elsewhere(conn: Connection, pub: Publication, channel: str) -> bool:
        subs = conn.subscriptions
        for other in pub.channels:
            if other != channel and other in subs and pub.offsets[other] >= subs[other]:
                return True
        return False

    def _subscribed(
        self,
        channel: str,
        position: Position,
        recovered: bool | None,
        reply: dict[str, Any] | None,
        presence: list[Member] | None = None,
    ) -> bytes:
        fields: dict[str, Any] = dict(reply or {})
        fields.update(channel=channel, offset=position.offset, epoch=position.epoch)
        if recovered is not None:
            fields["recovered"] = recovered
        if presence:
            fields["presence"] = [m.public() for m in presence]
        return codec.dumps({"type": "subscribed", "timestamp": codec.isotime(), **fields})

    def on_reset(self, channel: str, position: Position) -> None:
        """The channel's stream restarted at `position` with publications lost in between
        (Redis lost them, or an instance published without Redis): each subscriber here
        gets `subscribed` again with `recovered: false`, so it reloads instead of living
        with a silent gap. A socket still subscribing reads its own position."""
        frame = self._subscribed(channel, position, False, None)
        for conn in self.subscribers(channel):
            if conn.recovering is not None and channel in conn.recovering:
                continue
            conn.subscriptions[channel] = position.offset + 1
            conn.send(frame)

    async def unsubscribe(self, conn: Connection, channel: str) -> bool:
        if conn.subscriptions.pop(channel, None) is None:
            return False
        self._discard(channel, conn)
        member = self._leave(conn, channel)
        if member is not None:
            await self.bus.announce(channel, member, joined=False)
        return True

    # -- presence ----------------------------------------------------------------------

    def count_in(self, conn: Connection, channel: str) -> Member | None:
        """Count a socket in a channel's presence before it subscribes there (at connect,
        so presence includes it by the time it reads `connection`); subscribe with
        counted=True afterwards, and `announce_joined` the Member this returns."""
        return self._join(conn, channel)

    async def announce_joined(self, channel: str, member: Member) -> None:
        await self.bus.announce(channel, member, joined=True)

    def _join(self, conn: Connection, channel: str) -> Member | None:
        """Count the socket on a presence channel; the Member when it is its user's first
        here."""
        if not self.presence_on(channel):
            return None
        return self.bus.count_in(channel, conn.member_id, conn.member_name, label=conn.member_label)

    def _leave(self, conn: Connection, channel: str) -> Member | None:
        """Uncount the socket; the Member when that was its user's last socket here."""
        if not self.presence_on(channel):
            return None
        return self.bus.count_out(channel, conn.member_id)

    def members(self, channel: str) -> list[Member]:
        """This instance's members (seed views); the bus's `members` sees every instance."""
        return self.bus.presence.members(channel)

    # -- fan-out -----------------------------------------------------------------------

    async def on_publication(self, publications: list[Publication]) -> None:
        self._count(publications)
        queue = self._queue
        if queue is not None:
            # Behind a batch still being delivered: wait, with today's subscribers (a socket
            # subscribing from now on starts past these offsets).
            queue.append((publications, self._view(publications)))
            return
        if len(publications) <= BATCH_CHUNK:
            try:
                self._route(publications, self.channels)
            finally:
                self._observe(publications)
            return
        self._queue = deque([(publications, self._view(publications))])
        # Its own task: a publisher that goes away (a cancelled request) does not stop it.
        self._pump = asyncio.get_running_loop().create_task(self._deliver_queue())
        await asyncio.shield(self._pump)

    def _observe(self, publications: list[Publication]) -> None:
        if self.observe_latency is not None:
            self.observe_latency(time.perf_counter() - publications[0].accepted)

    def _view(self, publications: list[Publication]) -> Subscribers:
        """The current subscribers of the channels a batch names, frozen."""
        channels = self.channels
        names: set[str] = set()
        for lists in {pub.channels for pub in publications}:
            names.update(lists)
        return {ch: tuple(subs) for ch in names if (subs := channels.get(ch))}

    async def _deliver_queue(self) -> None:
        queue = self._queue
        assert queue is not None
        try:
            while queue:
                publications, view = queue[0]
                try:
                    for start in range(0, len(publications), BATCH_CHUNK):
                        if start:
                            # Let pings, reads and other sockets' writes run.
                            await asyncio.sleep(0)
                        self._route(publications[start : start + BATCH_CHUNK], view)
                finally:
                    self._observe(publications)
                queue.popleft()
        finally:
            self._queue = None
            self._pump = None

    def _count(self, publications: list[Publication]) -> None:
        """Per publication, never per delivery: the namespace counters."""
        published, label = self.stats.published, self.label
        for pub in publications:
            for channel in pub.channels:
                ns = label(channel)
                published[ns] = published.get(ns, 0) + 1

    def _delivered(self, channel: str, sent: int) -> None:
        """Per channel of a fan-out (or a batch): frames written there."""
        if sent:
            delivered, ns = self.stats.delivered, self.label(channel)
            delivered[ns] = delivered.get(ns, 0) + sent

    def _route(self, publications: list[Publication], channels: Subscribers) -> None:
        if len(publications) == 1:
            self._fan_out(publications[0], channels)
        else:
            self._fan_out_batch(publications, channels)
        if self.conflator.groups:
            offer = self.conflator.offer
            for pub in publications:
                offer(pub)

    def _fan_out_batch(self, publications: list[Publication], channels: Subscribers) -> None:
        # A batch (a request's readings, say): consecutive publications whose only channel
        # with subscribers is the same one are framed into one buffer, written to each of
        # its sockets once instead of once per publication per socket. Order per socket is
        # the publishing order either way.
        run: list[Publication] = []
        run_channel = ""  # no channel is named ""
        for pub in publications:
            channel = self._sole_channel(pub, channels)
            if channel is not None and channel == run_channel:
                run.append(pub)
                continue
            if run:
                self._fan_out_run(run_channel, run, channels)
            if channel is None:
                run, run_channel = [], ""
                self._fan_out(pub, channels)
            else:
                run, run_channel = [pub], channel
        if run:
            self._fan_out_run(run_channel, run, channels)

    @staticmethod
    def _sole_channel(pub: Publication, channels: Subscribers) -> str | None:
        """The publication's one channel with subscribers, if it has exactly one and goes to
        every subscriber alike (not ephemeral, nobody excluded)."""
        if pub.ephemeral or pub.exclude is not None:
            return None
        found = None
        for channel in pub.channels:
            if channel in channels:
                if found is not None:
                    return None
                found = channel
        return found

    def _fan_out_run(self, channel: str, pubs: list[Publication], channels: Subscribers) -> None:
        if len(pubs) == 1:
            self._fan_out(pubs[0], channels)
            return
        self.stats.publications += len(pubs)
        # framing -> the run's bytes in it, joined once per transport.
        batches: dict[Any, bytes] = {}
        sent = 0
        for conn in channels[channel]:
            try:
                if conn.recovering is None and conn.direct and not conn.compressed:
                    framing = conn.framing
                    batch = batches.get(framing)
                    if batch is None:
                        batch = batches[framing] = b"".join(
                            [pub.framed(framing, channel) for pub in pubs]
                        )
                    if conn.write(batch, b""):
                        sent += len(pubs)
                else:
                    for pub in pubs:
                        sent += self._deliver(conn, pub, channel)
            except Exception:
                log.exception("write to %s failed", conn.client_id)
                conn.drop("write failed")
        self.stats.messages_out += sent
        self._delivered(channel, sent)

    def _fan_out(self, pub: Publication, channels: Subscribers | None = None) -> None:
        self.stats.publications += 1
        if channels is None:
            channels = self.channels
        reached = [(ch, subs) for ch in pub.channels if (subs := channels.get(ch))]
        if not reached:
            return
        # Only a socket on two of the reached channels could be counted twice.
        seen: set[Connection] | None = set() if len(reached) > 1 else None
        exclude = pub.exclude
        sent = 0
        for channel, subs in reached:
            before = sent
            payload = pub.payload(channel)
            # The wire bytes of the last transport seen: subscribers of one transport in a
            # row share them without a lookup.
            framing: Any = None
            wire = b""
            # Nothing below changes `subs`: a dropped socket leaves it in its own cleanup.
            for conn in subs:
                if seen is not None:
                    if conn in seen:
                        continue
                    seen.add(conn)
                if exclude is not None and conn.member_id == exclude:
                    continue
                try:
                    if conn.recovering is None and conn.direct:
                        if conn.framing is not framing:
                            framing = conn.framing
                            wire = pub.framed(framing, channel)
                        if conn.write(wire, payload):
                            sent += 1
                    else:
                        sent += self._deliver(conn, pub, channel)
                except Exception:
                    # One broken socket must not stop the others, nor fail the publisher.
                    log.exception("write to %s failed", conn.client_id)
                    conn.drop("write failed")
            self._delivered(channel, sent - before)
        self.stats.messages_out += sent

    @staticmethod
    def _deliver(conn: Connection, pub: Publication, channel: str) -> int:
        """One publication to a connection that is recovering a channel (or skipping what
        its join state covered), speaks a seed's dialect or frames per connection (or, in a
        run, compresses): 1 if written."""
        recovering = conn.recovering
        if recovering is not None:
            if channel in recovering:
                # Presence and typing have no place in the stream being recovered.
                if not pub.ephemeral:
                    recovering[channel].append(pub)
                return 0
            if conn.covered(pub, channel):
                return 0
        return int(conn.deliver(pub, channel))

    def _deliver_conflated(self, group: Conflation, pub: Publication) -> None:
        """A publication the Conflator lets through, to every member of `group`."""
        channel = group.channel
        others = len(pub.channels) > 1
        exclude = pub.exclude
        sent = 0
        for conn in list(group.members):
            if others and self._reached_otherwise(conn, pub, channel):
                continue
            if exclude is not None and conn.member_id == exclude:
                continue
            try:
                sent += self._deliver(conn, pub, channel)
            except Exception:
                log.exception("write to %s failed", conn.client_id)
                conn.drop("write failed")
        self.stats.messages_out += sent
        self._delivered(channel, sent)

    @staticmethod
    def _reached_otherwise(conn: Connection, pub: Publication, channel: str) -> bool:
        """Whether the connection gets `pub` through another of its channels: one it is
        subscribed to without conflation, or a conflated one named before `channel`."""
        conflated = conn.conflated or {}
        before = True
        for other in pub.channels:
            if other == channel:
                before = False
            elif other in conn.subscriptions and (other not in conflated or before):
                return True
        return False

    # -- introspection -------------------------------------------------------------------

    def channel_names(self) -> set[str]:
        """Channels with subscribers, conflated or not."""
        return set(self.channels) | set(self.conflator.groups)

    def subscribers(self, channel: str) -> set[Connection]:
        return self.channels.get(channel, set()) | self.conflator.members(channel)
