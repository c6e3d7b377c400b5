"""Publishing through Redis: one PUBLISH script call per chunk of a batch, all in one
pipeline (one round trip), which gives each publication its offsets and epochs; during an
outage, offsets of this instance's outage epoch and delivery to this instance alone.
Ephemeral publications (typing, presence) are a bare pub/sub PUBLISH, never stored.
"""

from __future__ import annotations

import math
import secrets
from typing import Any

from server import codec
from server.bus import Publication
from server.bus import redis_lua as lua
from server.bus.redis_base import DOWN, RedisBase, meta_ttl, now_ms
from server.bus.redis_lua import Script

# Publications per script call: a 10,000-reading batch is 10 calls in one pipeline (one
# round trip) rather than one call that blocks Redis for long.
CHUNK = 1000

PUBLISH = Script(lua.PUBLISH)


class RedisPublisher(RedisBase):
    async def publish(self, publications: list[Publication]) -> None:
        if self.up:
            try:
                await self._publish_redis(publications)
                return
            except DOWN as exc:
                self._went_down(exc)
        await self._publish_here(publications)

    async def _publish_redis(self, publications: list[Publication]) -> None:
        calls = []
        chunks = [publications[i : i + CHUNK] for i in range(0, len(publications), CHUNK)]
        now = now_ms()
        for chunk in chunks:
            index: dict[str, int] = {}
            tail: list[Any] = []
            for pub in chunk:
                idx = [index.setdefault(ch, len(index) + 1) for ch in pub.channels]
                body = {"c": pub.channels, "t": pub.type, "b": pub.body, "ts": pub.timestamp}
                tail += [len(idx), *idx, codec.dumps(body)]
            keys = [f"{self.prefix}seq"]
            args: list[Any] = [self.pubsub_prefix, secrets.token_hex(5), now, len(index)]
            for channel in index:
                rule = self.rule(channel)
                keys += [self._meta(channel), self._stream(channel)]
                args += [channel, rule.size, rule.max_bytes, math.ceil(rule.ttl), meta_ttl(rule)]
            calls.append((PUBLISH, keys, [*args, *tail], index))
        results = await self._eval_many([(s, k, a) for s, k, a, _ in calls])
        for (_, _, _, index), result, chunk in zip(calls, results, chunks, strict=True):
            epochs = {ch: result[2 * (i - 1)].decode() for ch, i in index.items()}
            tops = {ch: int(result[2 * (i - 1) + 1]) for ch, i in index.items()}
            for pub in chunk:
                for ch in pub.channels:
                    tops[ch] += 1
                    pub.offsets[ch] = tops[ch]
                    pub.epochs[ch] = epochs[ch]

    async def _publish_here(self, publications: list[Publication]) -> None:
        """During an outage: offsets of this instance's outage epoch, this instance only."""
        epoch, offsets = self._outage_epoch, self._outage_offsets
        for pub in publications:
            for ch in pub.channels:
                offset = offsets[ch] = offsets.get(ch, 0) + 1
                pub.offsets[ch] = offset
                pub.epochs[ch] = epoch
                self._outage_channels.add(ch)
                if ch in self.listening:
                    self.seen[ch] = (epoch, offset)
        if self._deliver is not None:
            await self._deliver(publications)

    async def publish_ephemeral(self, publication: Publication) -> None:
        if self.up:
            body = {
                "c": publication.channels,
                "t": publication.type,
                "b": publication.body,
                "ts": publication.timestamp,
                "x": publication.exclude,
            }
            try:
                channel = publication.channels[0]
                await self.redis.publish(self.pubsub_prefix + channel, b"0||||" + codec.dumps(body))
                return
            except DOWN as exc:
                self._went_down(exc)
        if self._deliver is not None:
            await self._deliver([publication])
