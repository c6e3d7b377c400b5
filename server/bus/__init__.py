"""The event bus: services publish a Publication; receivers (the hub) get it via aiosignal.

A Backend assigns per-channel offsets, keeps recent history for recovery and hands each
publication back to `Bus.deliver`; `local` does that in memory, `redis` (scale-out) will do it
through Redis, so neither services nor the hub change with the backend.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from aiosignal import Signal

from server import codec

if TYPE_CHECKING:
    from server.compat import Dialect

# Frame types a publication may carry; anything else from outside is wrapped as `event`.
PUBLICATION_TYPES = frozenset({"event", "system_event", "entity_event", "notification", "message"})
# Keys the publication envelope owns; a body never sets them.
ENVELOPE_KEYS = frozenset({"type", "channel", "offset", "epoch", "timestamp", "offsets"})


@dataclass(slots=True, eq=False)
class Publication:
    """One event on one or more channels; encoded once, framed once per named channel."""

    channels: tuple[str, ...]
    type: str
    body: dict[str, Any]
    timestamp: str = field(default_factory=codec.isotime)
    epoch: str = ""
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
    # perf_counter() when it was made: sensorcast_publish_latency_seconds starts here.
    accepted: float = field(default_factory=time.perf_counter, repr=False)

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
                "epoch": self.epoch,
                "timestamp": self.timestamp,
            }
        frame.update(self.body)
        if len(self.channels) > 1:
            frame["offsets"] = self.offsets
        data = self._payloads[channel] = codec.dumps(frame)
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
class Position:
    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class Recovery:
    publications: list[Publication]
    recovered: bool
    position: Position


Deliver = Callable[[list[Publication]], Awaitable[None]]


class Backend(Protocol):
    epoch: str

    async def start(self, deliver: Deliver) -> None: ...
    async def stop(self) -> None: ...
    async def publish(self, publications: list[Publication]) -> None:
        """Assign offsets and epoch to each, in order, keep history, then deliver the batch
        (here, or on every instance)."""

    async def position(self, channel: str) -> Position: ...
    async def recover(self, channel: str, since: Position) -> Recovery:
        """Publications after `since`, oldest first; recovered=False when the gap is lost."""

    def trim(self) -> int:
        """Drop expired history; returns how many publications were dropped."""


class Bus:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        # Receivers get batches of publications in publishing order. They are added during
        # app setup, then the signal is frozen at start.
        self.on_publication: Signal[list[Publication]] = Signal(self)

    async def start(self) -> None:
        self.on_publication.freeze()
        await self.backend.start(self.deliver)

    async def stop(self) -> None:
        await self.backend.stop()

    async def deliver(self, publications: list[Publication]) -> None:
        await self.on_publication.send(publications)

    async def publish(
        self, channels: Sequence[str], type: str, body: dict[str, Any]
    ) -> Publication:
        (publication,) = await self.publish_many([(channels, type, body)])
        return publication

    async def publish_many(
        self, events: Iterable[tuple[Sequence[str], str, dict[str, Any]]]
    ) -> list[Publication]:
        """Several events published in order as one batch (e.g. one per reading of a
        request): one timestamp, one pass through the backend and one delivery."""
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
        if batch:
            await self.backend.publish(batch)
        return batch

    async def publish_ephemeral(
        self, channel: str, type: str, body: dict[str, Any], exclude: str | None = None
    ) -> None:
        """Presence and typing: to the channel's current subscribers (except `exclude`'s
        sockets), without an offset or a place in history."""
        await self.deliver([Publication((channel,), type, body, ephemeral=True, exclude=exclude)])

    async def position(self, channel: str) -> Position:
        return await self.backend.position(channel)

    async def recover(self, channel: str, since: Position) -> Recovery:
        return await self.backend.recover(channel, since)
