"""The event bus: services publish a Publication; receivers (the hub) get it via aiosignal.

A Backend assigns per-channel offsets and epochs, keeps recent history for recovery, knows
who is present where, and hands each publication back to `Bus.deliver`; `local` does that
in memory, `redis` (server/bus/redis.py) through Redis for every instance. Services and the
hub ask only the bus, whichever backend it has.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from aiosignal import Signal

from server import codec
from server.bus.presence import Member, PresenceTable
from server.errors import TooLarge

if TYPE_CHECKING:
    from server.compat import Dialect

# Frame types a publication may carry; anything else from outside is wrapped as `event`.
PUBLICATION_TYPES = frozenset({"event", "system_event", "entity_event", "notification", "message"})
# Keys the publication envelope owns; a body never sets them.
ENVELOPE_KEYS = frozenset({"type", "channel", "offset", "epoch", "timestamp", "offsets"})
# What the envelope adds to a body, beyond its channel names: type, offset, epoch, time.
ENVELOPE_BYTES = 160


@dataclass(frozen=True, slots=True, eq=False)
class Framing:
    """A transport's framing of a publication on one channel: the bytes every connection
    of that transport gets, cached on the publication (Publication.framed)."""

    name: str
    encode: Callable[[Publication, str], bytes]


@dataclass(slots=True, eq=False)
class Publication:
    """One event on one or more channels; encoded once, framed once per named channel."""

    channels: tuple[str, ...]
    type: str
    body: dict[str, Any]
    timestamp: str = field(default_factory=codec.isotime)
    # Per channel: each channel's epoch is its own (made with the channel's state).
    epochs: dict[str, str] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)
    # Presence and typing: for whoever is subscribed now; no offset, no history, no recovery.
    ephemeral: bool = False
    # A member id (Connection.member_id) whose sockets do not get it: the typist, the joiner.
    exclude: str | None = None
    # channel -> JSON payload naming that channel; filled lazily by payload().
    # Made on first use: most publications reach no subscriber at all.
    _payloads: dict[str, bytes] | None = field(default=None, repr=False)
    # (dialect, channel) -> that seed protocol's bytes (server.compat), or None: not sent.
    _translated: dict[tuple[Dialect, str], bytes | None] | None = field(default=None, repr=False)
    # (framing, channel) -> a transport's bytes (a WebSocket frame, an SSE event).
    _framed: dict[tuple[Framing, str], bytes] | None = field(default=None, repr=False)
    # perf_counter() when it was made: sensorcast_publish_latency_seconds starts here.
    accepted: float = field(default_factory=time.perf_counter, repr=False)

    @property
    def epoch(self) -> str:
        """The first channel's epoch: where a publish call says it landed."""
        return self.epochs.get(self.channels[0], "")

    def payload(self, channel: str) -> bytes:
        """The frame's JSON bytes with `channel`/`offset` naming `channel`; cached.

        The envelope and the body go through one dumps call: the envelope's fields first,
        then the body's, then `offsets` when there are several channels. Encoding the body
        once and splicing heads onto it per channel cost more than twice as much, and a
        publication reaches a socket through one channel nearly always."""
        if self._payloads is None:
            self._payloads = {}
        elif (cached := self._payloads.get(channel)) is not None:
            return cached
        if self.ephemeral:
            frame: dict[str, Any] = {
                "type": self.type,
                "channel": channel,
                "timestamp": self.timestamp,
            }
        else:
            frame = {
                "type": self.type,
                "channel": channel,
                "offset": self.offsets[channel],
                "epoch": self.epochs[channel],
                "timestamp": self.timestamp,
            }
        frame.update(self.body)
        if len(self.channels) > 1:
            frame["offsets"] = self.offsets
        data = self._payloads[channel] = codec.dumps(frame)
        return data

    def framed(self, framing: Framing, channel: str) -> bytes:
        """framing.encode(self, channel), once per transport and channel for every subscriber."""
        cache = self._framed
        key = (framing, channel)
        if cache is None:
            cache = self._framed = {}
        elif (hit := cache.get(key)) is not None:
            return hit
        data = cache[key] = framing.encode(self, channel)
        return data

    def translated(self, dialect: Dialect, channel: str) -> bytes | None:
        """payload(channel) in a seed's protocol; cached per dialect and channel."""
        if self._translated is None:
            self._translated = {}
        key = (dialect, channel)
        if key not in self._translated:
            self._translated[key] = dialect.encode(self.payload(channel))
        return self._translated[key]


@dataclass(frozen=True, slots=True)
class HistoryRule:
    """How much of a channel's past is kept: `size` publications (0: none), for `ttl`
    seconds (0: until pushed out), within `max_bytes` of payload (0: no cap)."""

    size: int
    ttl: float
    max_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Position:
    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class Recovery:
    publications: list[Publication]
    recovered: bool
    position: Position


Deliver = Callable[[list[Publication]], Awaitable[None]]
# A channel's stream on this instance restarted at Position without the publications in
# between (Redis lost them, or they were made on an instance cut off from Redis): its
# subscribers are told `recovered: false`.
Reset = Callable[[str, "Position"], None]


class Backend(Protocol):
    """What a bus backend provides; tests/bus/test_contract.py runs over every one."""

    maintain_interval: float

    async def start(self, deliver: Deliver, reset: Reset, presence: PresenceTable) -> None: ...
    async def stop(self) -> None: ...
    async def publish(self, publications: list[Publication]) -> None:
        """Assign offsets and epochs to each, in order, keep history, then deliver the batch
        on every instance that listens to one of its channels."""

    async def publish_ephemeral(self, publication: Publication) -> None:
        """No offset, no history: to whoever listens now, on every instance."""

    async def listen(self, channel: str) -> None:
        """This instance has subscribers there: from when this returns, every publication on
        the channel reaches `deliver` here."""

    def unlisten(self, channel: str) -> None: ...
    async def position(self, channel: str) -> Position: ...
    async def recover(self, channel: str, since: Position) -> Recovery:
        """Publications after `since`, oldest first; recovered=False when the gap is lost."""

    async def present(self, channel: str, member: Member, joined: bool) -> None:
        """`member`'s first socket here arrived (joined) or its last one here left: announces
        `user_joined` / `user_left` when that makes the user's first socket, or last one,
        on every instance."""

    async def members(self, channel: str) -> list[Member]:
        """Who is on the channel, on every instance (sockets summed)."""

    async def presence_channels(self) -> dict[str, list[Member]]: ...
    async def maintain(self) -> int:
        """The periodic job (jobs.py): trims expired history, evicts idle channels, keeps this
        instance's presence alive and expires dead instances'. Returns items dropped."""

    def health(self) -> dict[str, Any]:
        """{"status": "ok"|"down", ...} for /health."""


def _envelope_bytes(channels: Sequence[str]) -> int:
    """What a publication's frame adds to its body: the envelope, each channel's name (as
    `channel` and in `offsets`) and offset, the frame header."""
    return ENVELOPE_BYTES + sum(2 * len(ch) + 24 for ch in channels)


class Bus:
    def __init__(self, backend: Backend, instance: str = "", max_payload_bytes: int = 0) -> None:
        self.backend = backend
        # Which process this is, in stats and in Redis presence.
        self.instance = instance
        # This instance's members per presence channel (the backend shares what it needs).
        self.presence = PresenceTable()
        # A publication bigger than any subscriber's outbound budget could never be
        # delivered: it is refused before it gets an offset (0 = no limit).
        self.max_payload_bytes = max_payload_bytes
        # Receivers get batches of publications in publishing order. They are added during
        # app setup, then the signal is frozen at start.
        self.on_publication: Signal[list[Publication]] = Signal(self)
        self.on_reset: list[Reset] = []

    async def start(self) -> None:
        self.on_publication.freeze()
        await self.backend.start(self.deliver, self.reset, self.presence)

    async def stop(self) -> None:
        await self.backend.stop()

    async def deliver(self, publications: list[Publication]) -> None:
        await self.on_publication.send(publications)

    def reset(self, channel: str, position: Position) -> None:
        for receiver in self.on_reset:
            receiver(channel, position)

    async def publish(
        self, channels: Sequence[str], type: str, body: dict[str, Any]
    ) -> Publication:
        (publication,) = await self.publish_many([(channels, type, body)])
        return publication

    async def publish_many(
        self, events: Iterable[tuple[Sequence[str], str, dict[str, Any]]], sized: bool = False
    ) -> list[Publication]:
        """Several events published in order as one batch (e.g. one per reading of a
        request): one timestamp, one pass through the backend and one delivery.
        `sized`: the caller knows each body fits the budget (see check_size), so they are
        not encoded once more to make sure."""
        stamp = codec.isotime()
        # A batch repeats a few channel lists many times (one per reading of a sensor):
        # each distinct list is de-duplicated once.
        unique: dict[Any, tuple[str, ...]] = {}
        batch = []
        for channels, kind, body in events:
            key = channels if type(channels) is tuple else tuple(channels)
            names = unique.get(key)
            if names is None:
                names = unique[key] = tuple(dict.fromkeys(key))
            batch.append(Publication(names, kind, body, stamp))
        limit = self.max_payload_bytes
        if limit and not sized:
            # One encode of each body, not per delivery; the envelope once per channel list.
            room: dict[tuple[str, ...], int] = {}
            dumps = codec.dumps
            for pub in batch:
                left = room.get(pub.channels)
                if left is None:
                    left = room[pub.channels] = limit - _envelope_bytes(pub.channels)
                if len(dumps(pub.body)) > left:
                    self.check_size(pub.channels, pub.body)
        if batch:
            await self.backend.publish(batch)
        return batch

    def check_size(self, channels: Sequence[str], body: dict[str, Any]) -> None:
        """TooLarge (413) when a publication of `body` would not fit a subscriber's outbound
        budget; callers that store before publishing call it first."""
        limit = self.max_payload_bytes
        if not limit:
            return
        size = len(codec.dumps(body)) + _envelope_bytes(channels)
        if size > limit:
            raise TooLarge(
                f"a publication of {size} bytes exceeds the {limit}-byte outbound budget "
                "of a subscriber (ws.max_queue_bytes)",
                {"bytes": size, "max_bytes": limit},
            )

    async def publish_ephemeral(
        self, channel: str, type: str, body: dict[str, Any], exclude: str | None = None
    ) -> None:
        """Presence and typing: to the channel's current subscribers (except `exclude`'s
        sockets) on every instance, without an offset or a place in history."""
        pub = Publication((channel,), type, body, ephemeral=True, exclude=exclude)
        await self.backend.publish_ephemeral(pub)

    async def listen(self, channel: str) -> None:
        await self.backend.listen(channel)

    def unlisten(self, channel: str) -> None:
        self.backend.unlisten(channel)

    async def position(self, channel: str) -> Position:
        return await self.backend.position(channel)

    async def recover(self, channel: str, since: Position) -> Recovery:
        return await self.backend.recover(channel, since)

    # -- presence ------------------------------------------------------------------------

    def count_in(
        self, channel: str, member_id: str, name: str, label: str | None = None
    ) -> Member | None:
        """Count one more socket of a member here, at once (before any await); the Member
        when it is that member's first socket here (to `announce`). `member_id` is the
        identity (Member.key), `label` the user_id clients see (default: the id)."""
        member = self.presence.count(channel, member_id, label or member_id, name)
        return member if member.sockets == 1 else None

    def count_out(self, channel: str, member_id: str) -> Member | None:
        """One socket fewer; the Member when that was its last one here (to `announce`)."""
        member = self.presence.uncount(channel, member_id)
        return member if member is not None and member.sockets <= 0 else None

    async def announce(self, channel: str, member: Member, joined: bool) -> None:
        """Tell the backend, and through it every instance, of a count_in / count_out."""
        await self.backend.present(channel, member, joined)

    async def maintain(self) -> int:
        return await self.backend.maintain()

    async def members(self, channel: str) -> list[Member]:
        return await self.backend.members(channel)

    async def presence_channels(self) -> dict[str, list[Member]]:
        return await self.backend.presence_channels()
