"""In-process backend: offsets, one epoch per process, ring-buffer history per channel."""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable

from server.bus import Deliver, Position, Publication, Recovery


class _ChannelState:
    __slots__ = ("history", "offset", "stamps")

    def __init__(self, size: int) -> None:
        self.offset = 0
        # Publications, bounded by history.size, and the monotonic time each was kept at
        # (same length, same order); None: no history kept. Two deques rather than one of
        # (time, publication) pairs: a busy server keeps ~100k publications here, and a
        # pair per entry is one more object each that every full GC pass walks.
        self.history: deque[Publication] | None = deque(maxlen=size) if size else None
        self.stamps: deque[float] = deque(maxlen=size)


class LocalBackend:
    def __init__(
        self,
        history_size: int,
        history_ttl: float,
        keeps_history: Callable[[str], bool] = lambda channel: True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # History ages by this clock: a test moves it instead of patching time.monotonic,
        # which would freeze the event loop's clock too.
        self.clock = clock
        # A new epoch per process: offsets from a previous run cannot be trusted.
        self.epoch = secrets.token_hex(6)
        self.size = history_size
        self.ttl = history_ttl
        self.keeps_history = keeps_history
        # Offsets are kept even when a channel's history expires, so they never repeat.
        self.channels: dict[str, _ChannelState] = {}
        self._deliver: Deliver | None = None

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver

    async def stop(self) -> None:
        self._deliver = None

    def _state(self, channel: str) -> _ChannelState:
        state = self.channels.get(channel)
        if state is None:
            # Whether a channel keeps history is decided once, when it is first seen.
            size = self.size if self.keeps_history(channel) else 0
            state = self.channels[channel] = _ChannelState(size)
        return state

    async def publish(self, publications: list[Publication]) -> None:
        now = self.clock()
        channels = self.channels
        for publication in publications:
            publication.epoch = self.epoch
            offsets = publication.offsets
            for channel in publication.channels:
                state = channels.get(channel) or self._state(channel)
                state.offset += 1
                offsets[channel] = state.offset
                if state.history is not None:
                    state.history.append(publication)
                    state.stamps.append(now)
        if self._deliver is not None:
            await self._deliver(publications)

    async def position(self, channel: str) -> Position:
        state = self.channels.get(channel)
        return Position(state.offset if state else 0, self.epoch)

    async def recover(self, channel: str, since: Position) -> Recovery:
        state = self.channels.get(channel)
        top = state.offset if state else 0
        position = Position(top, self.epoch)
        if since.epoch != self.epoch or since.offset > top:
            return Recovery([], False, position)
        if since.offset == top:
            return Recovery([], True, position)
        assert state is not None
        if state.history is None:
            return Recovery([], False, position)
        oldest_alive = self.clock() - self.ttl
        missed = [
            pub
            for stamp, pub in zip(state.stamps, state.history, strict=True)
            if pub.offsets[channel] > since.offset and (not self.ttl or stamp >= oldest_alive)
        ]
        if not missed or missed[0].offsets[channel] != since.offset + 1:
            return Recovery([], False, position)
        return Recovery(missed, True, position)

    def trim(self) -> int:
        if not self.ttl:
            return 0
        oldest_alive = self.clock() - self.ttl
        dropped = 0
        for state in self.channels.values():
            history, stamps = state.history, state.stamps
            while history and stamps[0] < oldest_alive:
                history.popleft()
                stamps.popleft()
                dropped += 1
        return dropped
