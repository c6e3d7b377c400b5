"""The listener: this instance's one pub/sub task, which subscribes the channels that have
subscribers here and hands their publications to the hub once each, in offset order.

A publication on several channels arrives once per channel; the per-channel position seen
so far makes it reach the hub once, and shows a gap when one opens. On a lost or silent
connection it reconnects with capped backoff, retires the channels this instance published
to alone during an outage (a new epoch in Redis), then catches up from the streams where it
can and signals `reset` where not.
"""

from __future__ import annotations

import asyncio
import secrets

from server.bus import Position, Publication
from server.bus import redis_lua as lua
from server.bus.redis_base import COMMAND_TIMEOUT, log, meta_ttl, now_ms
from server.bus.redis_history import READ, RedisHistory
from server.bus.redis_lua import Script
from server.bus.redis_presence import RedisPresence
from server.bus.redis_pubsub import PubSubConnection

# Reconnect backoff: doubling from MIN to MAX seconds, so delivery resumes well within
# SPEC §7's 5 s of Redis returning.
BACKOFF_MIN = 0.1
BACKOFF_MAX = 2.0
# A pub/sub connection silent this long is pinged; after HEALTH_MISSES silent periods it
# is taken for dead (a half-open TCP connection never says so itself).
HEALTH_SECONDS = 1.0
HEALTH_MISSES = 3

RETIRE = Script(lua.RETIRE)


class RedisListener(RedisHistory, RedisPresence):
    async def listen(self, channel: str) -> None:
        pending = self._pending.get(channel)
        if channel not in self.listening:
            self.listening.add(channel)
            conn = self._conn
            if conn is None:
                return  # the next connection subscribes every channel listened to
            pending = self._pending[channel] = asyncio.get_running_loop().create_future()
            conn.send("SUBSCRIBE", self.pubsub_prefix + channel)
        if not self.up:
            return  # (re)connecting: its catch-up covers what passes meanwhile
        if pending is not None and not pending.done():
            try:
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    await asyncio.shield(pending)
            except TimeoutError:
                pass  # the connection is failing; the listener will notice and resubscribe

    def unlisten(self, channel: str) -> None:
        self.listening.discard(channel)
        self.seen.pop(channel, None)
        if self._conn is not None:
            self._conn.send("UNSUBSCRIBE", self.pubsub_prefix + channel)

    def _confirmed(self, name: bytes) -> None:
        channel = name[len(self.pubsub_prefix) :].decode()
        pending = self._pending.pop(channel, None)
        if pending is not None and not pending.done():
            pending.set_result(None)

    async def _listen_forever(self) -> None:
        """The one pub/sub task of this instance, for its whole life: connect, subscribe,
        catch up, read; on any failure, back off and do it again (no task per attempt)."""
        delay = BACKOFF_MIN
        while True:
            conn = None
            try:
                conn = await PubSubConnection.open(self.url)
                await self._subscribe_all(conn)
                await self._resume()
                self._ready.set()
                delay = BACKOFF_MIN
                await self._read_loop(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._went_down(exc)
            finally:
                self._conn = None
                if conn is not None:
                    conn.close()
                for pending in self._pending.values():
                    if not pending.done():
                        pending.set_result(None)
                self._pending.clear()
            self.reconnects += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _subscribe_all(self, conn: PubSubConnection) -> None:
        """SUBSCRIBE every listened channel and wait for Redis to confirm each: after that,
        no publication on them can pass unseen."""
        self._conn = conn
        wanted = {self.pubsub_prefix + ch for ch in self.listening}
        if not wanted:
            conn.send("PING")
        else:
            conn.send("SUBSCRIBE", *sorted(wanted))
        waiting = set(wanted) or {"pong"}
        async with asyncio.timeout(COMMAND_TIMEOUT * 2):
            while waiting:
                for reply in await conn.read():
                    if isinstance(reply, list) and reply and reply[0] == b"subscribe":
                        waiting.discard(reply[1].decode())
                        self._confirmed(reply[1])
                    elif reply == b"PONG":
                        waiting.discard("pong")

    async def _resume(self) -> None:
        """Redis answers again: retire what the outage published, then catch up."""
        if not self.up:
            # The pool's connections from before the outage are dead; without this the
            # first commands would fail on them and call a new outage.
            await self.redis.connection_pool.disconnect()
            # Loaded now (a restarted Redis has none), not on a publication's NOSCRIPT.
            pipe = self.redis.pipeline(transaction=False)
            for script in Script.every:
                pipe.script_load(script.source)
            await pipe.execute()
        while self._outage_channels:
            gone = list(self._outage_channels)
            since = [self._outage_since]
            await self._eval_many(
                [(RETIRE, [self._meta(ch), self._stream(ch)], since) for ch in gone]
            )
            self._outage_channels.difference_update(gone)
        was_down = not self.up
        self.up = True
        self._outage_offsets.clear()
        if was_down and self._ready.is_set():
            log.warning("Redis is back: publications reach every instance again")
        await self._catch_up()
        await self._refresh_presence()

    async def _catch_up(self) -> None:
        """Publications this instance may have missed while its pub/sub connection was down:
        delivered from the streams when the gap is still there, else `reset`."""
        channels = [ch for ch in self.listening if ch in self.seen]
        if not channels:
            return
        calls = []
        for ch in channels:
            args = [secrets.token_hex(5), meta_ttl(self.rule(ch)), self.seen[ch][1], now_ms()]
            calls.append((READ, [self._meta(ch), self._stream(ch)], args))
        results = await self._eval_many(calls)
        missed: dict[int, Publication] = {}
        for ch, (epoch, top, entries) in zip(channels, results, strict=True):
            since = Position(self.seen[ch][1], self.seen[ch][0])
            recovery = self._recovery(ch, since, epoch.decode(), int(top), entries)
            if not recovery.recovered:
                self.seen[ch] = (recovery.position.epoch, recovery.position.offset)
                if self._reset is not None:
                    self._reset(ch, recovery.position)
                continue
            # The publication counter orders a catch-up that spans several channels.
            seqs = {int(eid.split(b"-")[0]): int(f[1].split(b"|", 1)[0]) for eid, f in entries}
            for pub in recovery.publications:
                missed[seqs[pub.offsets[ch]]] = pub
        await self._hand([p for _, p in sorted(missed.items()) if self._fresh(p)])

    async def _hand(self, batch: list[Publication]) -> None:
        """Deliver from the listener: a receiver's failure is logged, and must not pass for
        a lost connection (which would reconnect and replay)."""
        if not batch or self._deliver is None:
            return
        try:
            await self._deliver(batch)
        except Exception:
            log.exception("delivering %d publications failed", len(batch))

    async def _read_loop(self, conn: PubSubConnection) -> None:
        silent = 0
        while True:
            try:
                async with asyncio.timeout(HEALTH_SECONDS):
                    replies = await conn.read()
            except TimeoutError:
                silent += 1
                if silent >= HEALTH_MISSES:
                    raise ConnectionError("Redis pub/sub connection stopped answering") from None
                conn.send("PING")
                continue
            silent = 0
            batch: list[Publication] = []
            for reply in replies:
                if not isinstance(reply, list) or not reply:
                    continue
                kind = reply[0]
                if kind == b"message":
                    channel = reply[1][len(self.pubsub_prefix) :].decode()
                    if channel not in self.listening:
                        continue  # unsubscribed meanwhile
                    pub = self._decode(reply[2], channel)
                    if pub.ephemeral:
                        batch.append(pub)
                        continue
                    gaps = self._gaps(pub)
                    if gaps:
                        # Publications before the gap go first, then the reset, then this.
                        await self._hand(batch)
                        batch = []
                        for ch, position in gaps:
                            if self._reset is not None:
                                self._reset(ch, position)
                    if self._fresh(pub):
                        batch.append(pub)
                elif kind == b"subscribe":
                    self._confirmed(reply[1])
            await self._hand(batch)

    def _gaps(self, pub: Publication) -> list[tuple[str, Position]]:
        """Listened channels where `pub` does not follow what was delivered here."""
        gaps = []
        for ch in pub.channels:
            seen = self.seen.get(ch)
            if seen is None or ch not in self.listening:
                continue
            epoch, offset = pub.epochs[ch], pub.offsets[ch]
            if epoch != seen[0] or offset > seen[1] + 1:
                gaps.append((ch, Position(offset - 1, epoch)))
                self.seen[ch] = (epoch, offset - 1)
        return gaps

    def _fresh(self, pub: Publication) -> bool:
        """Whether `pub` is new here (not already delivered through another of its channels
        or by a catch-up); records it as seen."""
        fresh = False
        for ch in pub.channels:
            if ch not in self.listening:
                continue
            seen = self.seen.get(ch)
            epoch, offset = pub.epochs[ch], pub.offsets[ch]
            if seen is None or seen[0] != epoch or offset > seen[1]:
                fresh = True
                self.seen[ch] = (epoch, offset)
        return fresh
