"""The instance's one Redis pub/sub connection, spoken directly (RESP over asyncio streams).

Not redis-py's PubSub: that one reconnects and resubscribes by itself, hiding the very
moment publications may have been lost (python-socketio's listener dies or skips events
exactly there). Here a closed or silent connection is an exception the backend sees, so
it can fill the gap from history or say `recovered: false`.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import unquote, urlsplit

# Seconds to connect (and authenticate) before the attempt counts as failed.
CONNECT_TIMEOUT = 2.0
READ_CHUNK = 256 * 1024


class Incomplete(Exception):
    """The buffer ends inside a reply: wait for more bytes."""


class RedisReplyError(Exception):
    pass


def encode(*args: str | bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def parse(buf: bytes | bytearray, pos: int) -> tuple[Any, int]:
    """One RESP2 reply from buf[pos:]: (value, position after it); Incomplete if cut."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise Incomplete
    kind, line = buf[pos : pos + 1], buf[pos + 1 : end]
    pos = end + 2
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            raise Incomplete
        return bytes(buf[pos : pos + size]), pos + size + 2
    if kind == b"*":
        count = int(line)
        items = []
        for _ in range(max(count, 0)):
            item, pos = parse(buf, pos)
            items.append(item)
        return items, pos
    if kind == b":":
        return int(line), pos
    if kind == b"+":
        return bytes(line), pos
    if kind == b"-":
        return RedisReplyError(bytes(line).decode(errors="replace")), pos
    raise RedisReplyError(f"unexpected reply type {kind!r}")


class PubSubConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._buf = bytearray()

    @classmethod
    async def open(cls, url: str) -> PubSubConnection:
        parts = urlsplit(url)
        async with asyncio.timeout(CONNECT_TIMEOUT):
            if parts.scheme == "unix":
                reader, writer = await asyncio.open_unix_connection(parts.path)
            else:
                ssl = parts.scheme == "rediss"
                reader, writer = await asyncio.open_connection(
                    parts.hostname or "127.0.0.1", parts.port or 6379, ssl=ssl or None
                )
            conn = cls(reader, writer)
            try:
                if parts.password is not None:
                    user = unquote(parts.username or "")
                    auth = (user, unquote(parts.password)) if user else (unquote(parts.password),)
                    conn.send("AUTH", *auth)
                    (reply,) = await conn.read()
                    if isinstance(reply, RedisReplyError):
                        raise reply
                conn.send("CLIENT", "SETNAME", "sensorcast-pubsub")
                (reply,) = await conn.read()
            except BaseException:
                conn.close()
                raise
        return conn

    def send(self, *args: str | bytes) -> None:
        # A connection already lost is being replaced; the replacement subscribes afresh.
        if not self.writer.transport.is_closing():
            self.writer.write(encode(*args))

    async def read(self) -> list[Any]:
        """Every complete reply that has arrived, waiting for at least one."""
        while True:
            replies = []
            pos = 0
            buf = self._buf
            try:
                while pos < len(buf):
                    value, pos = parse(buf, pos)
                    replies.append(value)
            except Incomplete:
                pass
            if pos:
                del buf[:pos]
            if replies:
                return replies
            data = await self.reader.read(READ_CHUNK)
            if not data:
                raise ConnectionError("Redis closed the pub/sub connection")
            buf += data

    def close(self) -> None:
        """At once: the transport is aborted, so a blocked read() ends now."""
        self.writer.transport.abort()
