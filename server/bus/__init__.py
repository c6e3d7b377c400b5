"""The event bus: services publish a Publication; receivers (the hub) get it via aiosignal.

A Backend assigns per-channel offsets, keeps recent history for recovery and hands each
publication back to `Bus.deliver`; `local` does that in memory, `redis` (scale-out) will do it
through Redis, so neither services nor the hub change with the backend.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiosignal import Signal

from server import codec

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
    _body: bytes | None = field(default=None, repr=False)

    def payload(self, channel: str) -> bytes:
        """The frame's JSON bytes with `channel`/`offset` naming `channel`; cached."""
        if self._payloads is None:
            self._payloads = {}
        elif (cached := self._payloads.get(channel)) is not None:
            return cached
        if self._body is None:
            encoded = codec.dumps(self.body)
            self._body = encoded[1:-1]
            if len(self.channels) > 1:
                self._body += b"," if self._body else b""
                self._body += b'"offsets":' + codec.dumps(self.offsets)
        if self.ephemeral:
            head = b'{"type":%s,"channel":%s,"timestamp":"%s"' % (
                codec.dumps(self.type),
                codec.dumps(channel),
                self.timestamp.encode(),
            )
        else:
            head = b'{"type":%s,"channel":%s,"offset":%d,"epoch":%s,"timestamp":"%s"' % (
                codec.dumps(self.type),
                codec.dumps(channel),
                self.offsets[channel],
                codec.dumps(self.epoch),
                self.timestamp.encode(),
            )
        data = head + (b"," + self._body if self._body else b"") + b"}"
        self._payloads[channel] = data
        return data


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
        batch = [
            Publication(tuple(dict.fromkeys(channels)), kind, body, stamp)
            for channels, kind, body in events
        ]
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
