"""In-process backend: per-channel offset and epoch, ring-buffer history, presence.

A channel's state (offset, epoch, history) is made when it is first published to or
subscribed, and evicted by `maintain` once nobody here listens and no history is live, so
10,000 sensors that went quiet cost nothing. A channel that comes back gets a new epoch:
a client holding an old position gets `recovered: false`, never a reused offset.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from server.bus import Deliver, HistoryRule, Position, Publication, Recovery, Reset
from server.bus.presence import Member, PresenceTable


class _ChannelState:
    __slots__ = ("bytes", "epoch", "history", "offset", "rule", "sizes", "stamps")

    def __init__(self, epoch: str, rule: HistoryRule) -> None:
        self.epoch = epoch
        self.offset = 0
        self.rule = rule
        # Publications, bounded by the rule's size, and the monotonic time each was kept at
        # (same length, same order); None: no history kept. Parallel deques rather than one
        # of tuples: a busy server keeps ~100k publications here, and a tuple per entry is
        # one more object each that every full GC pass walks.
        self.history: deque[Publication] | None = deque() if rule.size else None
        self.stamps: deque[float] = deque()
        # Only with a byte cap: each kept publication's payload size, and their sum.
        self.sizes: deque[int] | None = deque() if rule.max_bytes else None
        self.bytes = 0

    def keep(self, pub: Publication, channel: str, now: float) -> None:
        history = self.history
        assert history is not None
        history.append(pub)
        self.stamps.append(now)
        if self.sizes is not None:
            size = len(pub.payload(channel))
            self.sizes.append(size)
            self.bytes += size
            while self.bytes > self.rule.max_bytes and history:
                self._drop()
        if len(history) > self.rule.size:
            self._drop()

    def _drop(self) -> None:
        assert self.history is not None
        self.history.popleft()
        self.stamps.popleft()
        if self.sizes is not None:
            self.bytes -= self.sizes.popleft()


def _default_rule(channel: str) -> HistoryRule:
    return HistoryRule(100, 0)


def _monotonic() -> float:
    return time.monotonic()


class LocalBackend:
    def __init__(
        self,
        history_size: int = 100,
        history_ttl: float = 0,
        history_rule: Callable[[str], HistoryRule] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        # History ages by this clock (default: time.monotonic, looked up at each call). A
        # test passes its own instead of patching time.monotonic, which would freeze the
        # event loop's clock too.
        self.clock = clock or _monotonic
        self.rule = history_rule or (lambda channel: HistoryRule(history_size, history_ttl))
        self.channels: dict[str, _ChannelState] = {}
        self.listening: set[str] = set()
        # Epochs are this process's prefix and a counter: unique per channel state, made
        # without a syscall.
        self._epoch_prefix = secrets.token_hex(4)
        self._epochs = itertools.count(1)
        self._deliver: Deliver | None = None
        self._presence = PresenceTable()
        # Seconds between `maintain` passes (history trim, eviction).
        self.maintain_interval = 30.0

    async def start(self, deliver: Deliver, reset: Reset, presence: PresenceTable) -> None:
        self._deliver = deliver
        self._presence = presence

    async def stop(self) -> None:
        self._deliver = None

    def _state(self, channel: str) -> _ChannelState:
        state = self.channels.get(channel)
        if state is None:
            epoch = f"{self._epoch_prefix}{next(self._epochs):x}"
            state = self.channels[channel] = _ChannelState(epoch, self.rule(channel))
        return state

    async def publish(self, publications: list[Publication]) -> None:
        now = self.clock()
        channels = self.channels
        for publication in publications:
            offsets = publication.offsets
            epochs = publication.epochs
            for channel in publication.channels:
                state = channels.get(channel) or self._state(channel)
                state.offset += 1
                offsets[channel] = state.offset
                epochs[channel] = state.epoch
                if state.history is not None:
                    state.keep(publication, channel, now)
        if self._deliver is not None:
            await self._deliver(publications)

    async def publish_ephemeral(self, publication: Publication) -> None:
        if self._deliver is not None:
            await self._deliver([publication])

    async def listen(self, channel: str) -> None:
        self.listening.add(channel)

    def unlisten(self, channel: str) -> None:
        self.listening.discard(channel)

    async def position(self, channel: str) -> Position:
        state = self._state(channel)
        return Position(state.offset, state.epoch)

    async def recover(self, channel: str, since: Position) -> Recovery:
        state = self._state(channel)
        top = state.offset
        position = Position(top, state.epoch)
        if since.epoch != state.epoch or since.offset > top:
            return Recovery([], False, position)
        if since.offset == top:
            return Recovery([], True, position)
        if state.history is None:
            return Recovery([], False, position)
        ttl = state.rule.ttl
        oldest_alive = self.clock() - ttl
        missed = [
            pub
            for stamp, pub in zip(state.stamps, state.history, strict=True)
            if pub.offsets[channel] > since.offset and (not ttl or stamp >= oldest_alive)
        ]
        if not missed or missed[0].offsets[channel] != since.offset + 1:
            return Recovery([], False, position)
        return Recovery(missed, True, position)

    # -- presence ------------------------------------------------------------------------

    async def present(self, channel: str, member: Member, joined: bool) -> None:
        """One process is the whole world: first here is first anywhere."""
        if self._deliver is None:
            return
        kind = "user_joined" if joined else "user_left"
        body = {"data": member.public()}
        pub = Publication((channel,), kind, body, ephemeral=True, exclude=member.key)
        await self._deliver([pub])

    async def members(self, channel: str) -> list[Member]:
        return self._presence.members(channel)

    async def presence_channels(self) -> dict[str, list[Member]]:
        return {ch: list(m.values()) for ch, m in self._presence.channels.items()}

    # -- upkeep ---------------------------------------------------------------------------

    async def maintain(self) -> int:
        return self.trim()

    def trim(self) -> int:
        """Drop expired history, then the state of channels nobody listens to and with no
        history left; returns how many publications were dropped."""
        now = self.clock()
        dropped = 0
        idle = []
        for channel, state in self.channels.items():
            history, stamps, ttl = state.history, state.stamps, state.rule.ttl
            if ttl and history:
                oldest_alive = now - ttl
                while history and stamps[0] < oldest_alive:
                    state._drop()
                    dropped += 1
            if not history and channel not in self.listening:
                idle.append(channel)
        for channel in idle:
            del self.channels[channel]
        return dropped

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "backend": "local"}
