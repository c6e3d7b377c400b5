"""What every part of the Redis backend shares: the client and this instance's state, the
key names, script calls (several in one round trip), and the moment an outage starts.

The parts (presence, publishing, history, listening) are mixins over this one class, and
server/bus/redis.py puts them together as RedisBackend.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Callable
from typing import Any

from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from server.bus import Deliver, HistoryRule, Reset
from server.bus.presence import PresenceTable
from server.bus.redis_lua import Script
from server.bus.redis_pubsub import PubSubConnection

# The backend's one logger, whichever part of it logs: operators filter on this name.
log = logging.getLogger("server.bus.redis")

COMMAND_TIMEOUT = 2.0
# Channels without history keep their offset this long after their last publication.
NO_HISTORY_META_TTL = 3600
# What a lost Redis raises (a reply error is a bug, not an outage).
DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError, OSError)


def now_ms() -> int:
    return int(time.time() * 1000)


def meta_ttl(rule: HistoryRule) -> int:
    if not rule.size:
        return NO_HISTORY_META_TTL
    return max(2 * math.ceil(rule.ttl), 60) if rule.ttl else 0


class RedisBase:
    def __init__(
        self,
        url: str,
        prefix: str,
        instance: str,
        history_rule: Callable[[str], HistoryRule],
        presence_ttl: float = 30.0,
    ) -> None:
        self.url = url
        self.prefix = prefix + ":"
        self.pubsub_prefix = f"{prefix}:p:"
        self.instance = instance
        self.rule = history_rule
        self.presence_ttl = presence_ttl
        self.maintain_interval = presence_ttl / 3
        self.redis = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=COMMAND_TIMEOUT,
            socket_timeout=COMMAND_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
        )
        self.up = False
        self.listening: set[str] = set()
        # channel -> (epoch, offset) of the newest publication delivered here.
        self.seen: dict[str, tuple[str, int]] = {}
        self.reconnects = 0
        self._pending: dict[str, asyncio.Future[None]] = {}
        self._conn: PubSubConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._deliver: Deliver | None = None
        self._reset: Reset | None = None
        self._presence = PresenceTable()
        self._presence_lock = asyncio.Lock()
        # While Redis is away: this instance's own epoch and offsets, and the channels
        # published to (they get a new epoch in Redis when it is back).
        self._outage_epoch = f"{instance}-{secrets.token_hex(3)}"
        self._outage_offsets: dict[str, int] = {}
        self._outage_channels: set[str] = set()
        self._outage_since = 0

    # -- keys ----------------------------------------------------------------------------

    def _meta(self, channel: str) -> str:
        return f"{self.prefix}m:{channel}"

    def _stream(self, channel: str) -> str:
        return f"{self.prefix}h:{channel}"

    # -- outage --------------------------------------------------------------------------

    def _went_down(self, exc: BaseException) -> None:
        """Once per outage: the log line, a fresh outage epoch, and the pub/sub connection
        dropped so that the listener's reconnect decides when Redis is back."""
        if self.up:
            self.up = False
            self._outage_epoch = f"{self.instance}-{secrets.token_hex(3)}"
            self._outage_since = now_ms()
            log.warning(
                "Redis unavailable (%s: %s): publications reach this instance's sockets "
                "only until it is back",
                type(exc).__name__,
                exc,
            )
        if self._conn is not None:
            self._conn.close()

    # -- script calls --------------------------------------------------------------------

    async def _eval(self, script: Script, keys: list[Any], args: list[Any]) -> Any:
        try:
            return await self.redis.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.redis.script_load(script.source)
            return await self.redis.evalsha(script.sha, len(keys), *keys, *args)

    async def _eval_many(self, calls: list[tuple[Script, list[Any], list[Any]]]) -> list[Any]:
        """Script calls in one pipeline: one round trip (two if Redis lost the scripts)."""
        if len(calls) == 1:
            script, keys, args = calls[0]
            return [await self._eval(script, keys, args)]
        for attempt in range(2):
            pipe = self.redis.pipeline(transaction=False)
            for script, keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            results = await pipe.execute(raise_on_error=False)
            if not any(isinstance(r, NoScriptError) for r in results) or attempt:
                break
            for script in Script.every:
                await self.redis.script_load(script.source)
        for result in results:
            if isinstance(result, Exception):
                raise result
        return list(results)
