"""One channel's subscription: its position (offset, epoch) and the frames for its consumer.

The position is what a reconnect resubscribes from: the frames the consumer gets carry
every offset once, in order; a gap the server could not fill arrives as the `subscribed`
frame with `recovered: false` (reload state then), never silently.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from server.client.errors import ClientError

Frame = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Position:
    offset: int
    epoch: str

    def as_since(self) -> dict[str, Any]:
        return {"offset": self.offset, "epoch": self.epoch}


_END = object()


class Subscription:
    """An async iterator of the channel's frames. Made by `Client.subscribe`."""

    def __init__(
        self,
        channel: str,
        since: Position | None,
        snapshot: bool,
        unsubscribe: Callable[[Subscription], Any],
    ) -> None:
        self.channel = channel
        self.position = since
        self.snapshot = snapshot
        # Times the server could not recover what was missed (recovered: false).
        self.gaps = 0
        # False until `subscribed` arrives on the current socket: frames before it belong
        # to a subscription this client did not ask for (the connect-time default).
        self.active = False
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._unsubscribe = unsubscribe
        self._ended = False

    def __repr__(self) -> str:
        return f"<Subscription {self.channel} at {self.position}>"

    def since(self) -> dict[str, Any] | None:
        return self.position.as_since() if self.position is not None else None

    async def ready(self) -> None:
        """Wait for the server's first `subscribed` (raises its error if refused)."""
        await asyncio.shield(self._ready)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Frame:
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._queue.put_nowait(item)
            raise item
        frame: Frame = item
        return frame

    async def unsubscribe(self) -> None:
        await self._unsubscribe(self)

    # Called by the client, from its reader task.
    def on_subscribed(self, frame: Frame) -> None:
        self.active = True
        recovered = frame.get("recovered")
        resubscribed = self.position is not None
        if not resubscribed or recovered is False:
            self.position = Position(int(frame["offset"]), str(frame["epoch"]))
        if recovered is False and resubscribed:
            self.gaps += 1
            self._queue.put_nowait(frame)
        if not self._ready.done():
            self._ready.set_result(None)

    def on_publication(self, frame: Frame) -> None:
        """Deliver a frame that names this channel; publications advance the position and
        one already seen (same epoch, offset not past ours) is dropped."""
        if not self.active:
            return
        offsets = frame.get("offsets")
        offset = offsets.get(self.channel) if isinstance(offsets, dict) else None
        if offset is None and frame.get("channel") == self.channel:
            offset = frame.get("offset")
        if isinstance(offset, int):
            epoch = frame.get("epoch") if frame.get("channel") == self.channel else None
            pos = self.position
            epoch = str(epoch) if epoch is not None else (pos.epoch if pos else "")
            if pos is not None and pos.epoch == epoch and offset <= pos.offset:
                return
            self.position = Position(offset, epoch)
        self._queue.put_nowait(frame)

    def fail(self, exc: ClientError) -> None:
        if not self._ready.done():
            self._ready.set_exception(exc)
            # Retrieved or not, this is not an "exception never retrieved" bug.
            self._ready.exception()
        self._end(exc)

    def end(self) -> None:
        if not self._ready.done():
            self._ready.cancel()
        self._end(_END)

    def _end(self, item: Any) -> None:
        if not self._ended:
            self._ended = True
            self._queue.put_nowait(item)
