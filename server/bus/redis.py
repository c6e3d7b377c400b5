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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import Callable
from typing import Any

from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, ResponseError

from server import codec
from server.bus import Deliver, HistoryRule, Position, Publication, Recovery, Reset
from server.bus import redis_lua as lua
from server.bus.presence import PresenceTable
from server.bus.redis_lua import Script
from server.bus.redis_presence import DOWN, RedisPresence
from server.bus.redis_pubsub import PubSubConnection

log = logging.getLogger(__name__)

# Reconnect backoff: doubling from MIN to MAX seconds, so delivery resumes well within
# SPEC §7's 5 s of Redis returning.
BACKOFF_MIN = 0.1
BACKOFF_MAX = 2.0
# A pub/sub connection silent this long is pinged; after HEALTH_MISSES silent periods it
# is taken for dead (a half-open TCP connection never says so itself).
HEALTH_SECONDS = 1.0
HEALTH_MISSES = 3
COMMAND_TIMEOUT = 2.0
# Publications per script call: a 10,000-reading batch is 10 calls in one pipeline (one
# round trip) rather than one call that blocks Redis for long.
CHUNK = 1000
# Channels without history keep their offset this long after their last publication.
NO_HISTORY_META_TTL = 3600


PUBLISH, READ, RETIRE = (Script(s) for s in (lua.PUBLISH, lua.READ, lua.RETIRE))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _meta_ttl(rule: HistoryRule) -> int:
    if not rule.size:
        return NO_HISTORY_META_TTL
    return max(2 * math.ceil(rule.ttl), 60) if rule.ttl else 0


class RedisBackend(RedisPresence):
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

    # -- life cycle ----------------------------------------------------------------------

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

    def _went_down(self, exc: BaseException) -> None:
        """Once per outage: the log line, a fresh outage epoch, and the pub/sub connection
        dropped so that the listener's reconnect decides when Redis is back."""
        if self.up:
            self.up = False
            self._outage_epoch = f"{self.instance}-{secrets.token_hex(3)}"
            self._outage_since = _now_ms()
            log.warning(
                "Redis unavailable (%s: %s): publications reach this instance's sockets "
                "only until it is back",
                type(exc).__name__,
                exc,
            )
        if self._conn is not None:
            self._conn.close()

    # -- publishing ----------------------------------------------------------------------

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
        now = _now_ms()
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
                args += [channel, rule.size, rule.max_bytes, math.ceil(rule.ttl), _meta_ttl(rule)]
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

    # -- reading -------------------------------------------------------------------------

    def _decode(self, data: bytes, channel: str) -> Publication:
        """A pub/sub message or stream entry (`seq|epochs|offsets|ms|json`)."""
        seq, epochs, offsets, _, body = data.split(b"|", 4)
        obj = codec.loads(body)
        if seq == b"0":
            return Publication(
                (channel,), obj["t"], obj["b"], obj["ts"], ephemeral=True, exclude=obj.get("x")
            )
        channels = tuple(obj["c"])
        return Publication(
            channels,
            obj["t"],
            obj["b"],
            obj["ts"],
            epochs=dict(zip(channels, epochs.decode().split(","), strict=True)),
            offsets=dict(zip(channels, map(int, offsets.split(b",")), strict=True)),
        )

    async def _read(self, channel: str, since: int | None) -> list[Any]:
        rule = self.rule(channel)
        args = [secrets.token_hex(5), _meta_ttl(rule), "" if since is None else since, _now_ms()]
        return list(await self._eval(READ, [self._meta(channel), self._stream(channel)], args))

    def _outage_position(self, channel: str) -> Position:
        return Position(self._outage_offsets.get(channel, 0), self._outage_epoch)

    def _note(self, channel: str, position: Position) -> Position:
        """A listened channel's first position read here is where its stream on this
        instance starts: a reconnect catches up from there even if nothing came since."""
        if channel in self.listening and channel not in self.seen:
            self.seen[channel] = (position.epoch, position.offset)
        return position

    async def position(self, channel: str) -> Position:
        if self.up:
            try:
                epoch, top = await self._read(channel, None)
                return self._note(channel, Position(int(top), epoch.decode()))
            except DOWN as exc:
                self._went_down(exc)
        return self._note(channel, self._outage_position(channel))

    async def recover(self, channel: str, since: Position) -> Recovery:
        if self.up:
            try:
                epoch, top, entries = await self._read(channel, since.offset)
            except DOWN as exc:
                self._went_down(exc)
            else:
                self._note(channel, Position(int(top), epoch.decode()))
                return self._recovery(channel, since, epoch.decode(), int(top), entries)
        position = self._note(channel, self._outage_position(channel))
        return Recovery([], since == position, position)

    def _recovery(
        self, channel: str, since: Position, epoch: str, top: int, entries: list[Any]
    ) -> Recovery:
        position = Position(top, epoch)
        if since.epoch != epoch or since.offset > top:
            return Recovery([], False, position)
        if since.offset == top:
            return Recovery([], True, position)
        ttl = self.rule(channel).ttl
        oldest_alive = (time.time() - ttl) * 1000
        missed = []
        for _, fields in entries:
            data = fields[1]
            if ttl and int(data.split(b"|", 4)[3]) < oldest_alive:
                continue
            missed.append(self._decode(data, channel))
        if not missed or missed[0].offsets[channel] != since.offset + 1:
            return Recovery([], False, position)
        # Anything past `top` was published after the position was read: the next live one.
        return Recovery([p for p in missed if p.offsets[channel] <= top], True, position)

    # -- listening -----------------------------------------------------------------------

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
            args = [secrets.token_hex(5), _meta_ttl(self.rule(ch)), self.seen[ch][1], _now_ms()]
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
