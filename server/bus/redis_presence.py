"""Presence in Redis, for the Redis backend: this instance's members with an expiry it keeps
refreshing, every instance's members listed, `user_joined` / `user_left` announced once per
user (the Lua decides, atomically, whether an entry is a user's first or last anywhere).
"""

from __future__ import annotations

import time
from typing import Any

from server import codec
from server.bus import Publication
from server.bus import redis_lua as lua
from server.bus.presence import Member
from server.bus.redis_base import DOWN, RedisBase
from server.bus.redis_lua import Script

JOIN, LEAVE, EXPIRE = (Script(s) for s in (lua.JOIN, lua.LEAVE, lua.EXPIRE))


class RedisPresence(RedisBase):
    def _presence_call(
        self, channel: str, member: Member, joined: bool
    ) -> tuple[Script, list[Any], list[Any]]:
        p = self.prefix
        keys = [f"{p}pr:{channel}", f"{p}pu:{channel}", f"{p}pexp", f"{p}pch"]
        kind = "user_joined" if joined else "user_left"
        body = {
            "c": [channel],
            "t": kind,
            "b": {"data": member.public()},
            "ts": codec.isotime(),
            "x": member.key,
        }
        info = codec.dumps([member.user_id, member.username, member.sockets, member.key])
        expiry = int((time.time() + self.presence_ttl) * 1000)
        args = [
            channel,
            f"{self.instance}|{member.key}",
            member.key,
            info,
            expiry,
            self.pubsub_prefix + channel,
            b"0||||" + codec.dumps(body),
        ]
        return (JOIN if joined else LEAVE), keys, args

    async def present(self, channel: str, member: Member, joined: bool) -> None:
        if self.up:
            async with self._presence_lock:
                try:
                    await self._eval(*self._presence_call(channel, member, joined))
                    return
                except DOWN as exc:
                    self._went_down(exc)
        # Cut off: this instance's sockets hear of it; the others once Redis is back.
        kind = "user_joined" if joined else "user_left"
        pub = Publication(
            (channel,), kind, {"data": member.public()}, ephemeral=True, exclude=member.key
        )
        if self._deliver is not None:
            await self._deliver([pub])

    def _merge(self, channel: str, entries: dict[bytes, bytes]) -> list[Member]:
        """Other instances' entries from Redis plus this instance's own table."""
        mine = f"{self.instance}|".encode()
        members: dict[str, Member] = {}
        for field, info in entries.items():
            if field.startswith(mine):
                continue
            user_id, username, sockets, key = codec.loads(info)
            member = members.setdefault(key, Member(user_id, username, key=key))
            member.sockets += sockets
        for local in self._presence.members(channel):
            member = members.setdefault(
                local.key, Member(local.user_id, local.username, key=local.key)
            )
            member.sockets += local.sockets
        return list(members.values())

    async def members(self, channel: str) -> list[Member]:
        if self.up:
            try:
                entries: Any = await self.redis.hgetall(f"{self.prefix}pr:{channel}")
                return self._merge(channel, entries)
            except DOWN as exc:
                self._went_down(exc)
        return self._presence.members(channel)

    async def presence_channels(self) -> dict[str, list[Member]]:
        local = {ch: list(m.values()) for ch, m in self._presence.channels.items()}
        if not self.up:
            return local
        try:
            keys: Any = await self.redis.hkeys(f"{self.prefix}pch")
            names = [n.decode() for n in keys]
            pipe = self.redis.pipeline(transaction=False)
            for name in names:
                pipe.hgetall(f"{self.prefix}pr:{name}")
            results = await pipe.execute() if names else []
        except DOWN as exc:
            self._went_down(exc)
            return local
        out = {name: self._merge(name, got) for name, got in zip(names, results, strict=True)}
        for channel in local:
            if channel not in out:
                out[channel] = self._merge(channel, {})
        return {ch: members for ch, members in out.items() if members}

    async def _refresh_presence(self) -> int:
        """This instance's entries written again with a new expiry (and re-announced if
        Redis had lost them), then dead instances' entries expired."""
        calls = [self._presence_call(ch, m, True) for ch, m in self._presence.entries()]
        p = self.prefix
        now = int(time.time() * 1000)
        calls.append((EXPIRE, [f"{p}pexp", f"{p}pch"], [now, p, codec.isotime()]))
        async with self._presence_lock:
            results = await self._eval_many(calls)
        return int(results[-1])
