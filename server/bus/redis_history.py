"""Reading a channel's state from Redis: its position (epoch and offset) for `subscribed`,
and recovery from a position out of its history stream, which is also how the listener
fills a gap after its pub/sub connection was lost.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from server import codec
from server.bus import Position, Publication, Recovery
from server.bus import redis_lua as lua
from server.bus.redis_base import DOWN, RedisBase, meta_ttl, now_ms
from server.bus.redis_lua import Script

READ = Script(lua.READ)


class RedisHistory(RedisBase):
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
        args = [secrets.token_hex(5), meta_ttl(rule), "" if since is None else since, now_ms()]
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
