"""Redis backend (`bus.backend: redis`): several instances behave as one server.

- Publishing is one Lua script per batch (redis_lua.PUBLISH): per channel the offset, the
  epoch, the history stream (trimmed to the channel's size, bytes and ttl) and the pub/sub
  announcement, atomically, so every instance sees a channel's publications in offset
  order. A batch is one round trip; publications are delivered here as on every other
  instance: from pub/sub, in that order.
- One pub/sub connection per instance (redis_pubsub), subscribed to the channels that have
  subscribers here. A publication on several channels arrives once per channel; the
  per-channel position seen so far makes it reach the hub once (exactly once across
  overlapping channels), and shows a gap when one opens.
- Presence: this instance's entries carry an expiry it refreshes (`maintain`); a dead
  instance's entries expire and `user_left` is published for them by whichever instance
  notices first.
- Outage: Redis unreachable or the pub/sub connection lost. Publications are then made
  here alone, under an outage epoch of this instance (offsets counted from 1), and reach
  only this instance's sockets; recovery answers `recovered: false`. The listener
  reconnects with capped backoff, the channels published to during the outage get a new
  epoch in Redis (so no client can recover across the outage as if nothing happened),
  gaps are filled from the streams where they can be, and `reset` is signalled where not.

The parts live beside this file: redis_base (client, state, keys, script calls, the start
of an outage), redis_publish, redis_history (positions, recovery), redis_listen (the
pub/sub task, reconnect, catch-up), redis_presence, redis_lua (the scripts) and
redis_pubsub (the connection).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from redis.exceptions import ResponseError

from server.bus import Deliver, Reset
from server.bus.presence import PresenceTable
from server.bus.redis_base import COMMAND_TIMEOUT, DOWN, log
from server.bus.redis_listen import RedisListener
from server.bus.redis_publish import RedisPublisher

__all__ = ["RedisBackend"]


class RedisBackend(RedisListener, RedisPublisher):
    """The Backend protocol over Redis: life cycle and health here, the rest in its parts."""

    async def start(self, deliver: Deliver, reset: Reset, presence: PresenceTable) -> None:
        self._deliver = deliver
        self._reset = reset
        self._presence = presence
        self._task = asyncio.get_running_loop().create_task(self._listen_forever())
        # Serve from the start either way; Redis being down at start is an outage.
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT * 2):
                await self._ready.wait()
        except TimeoutError:
            log.warning("Redis at %s not reachable at start: serving this instance only", self.url)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.redis.aclose()
        self._deliver = None

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.up else "down",
            "backend": "redis",
            "instance": self.instance,
            "reconnects": self.reconnects,
        }

    async def maintain(self) -> int:
        if not self.up:
            return 0
        try:
            return await self._refresh_presence()
        except DOWN as exc:
            self._went_down(exc)
            return 0
        except ResponseError:
            log.exception("presence refresh failed")
            return 0
