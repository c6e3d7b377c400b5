"""A WebSocket as a hub connection: RFC 6455 framing, permessage-deflate, the close handshake.

Server frames are unmasked, so an uncompressed frame is the same bytes for every socket: the
framing of a publication is cached on it and written to each socket as is. A compressing
socket deflates frame by frame through aiohttp's writer, in order.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from server.hub.connection import SLOW_CONSUMER, Connection, Framing
from server.ws.frames import text_frame

if TYPE_CHECKING:
    from server.bus import Publication


def _text_frame_of(pub: Publication, channel: str) -> bytes:
    return text_frame(pub.payload(channel))


# A publication's text frame on a channel, cached on it for every socket.
WS_FRAMING = Framing("websocket", _text_frame_of)


class WsConnection(Connection):
    __slots__ = ("ws",)

    framing = WS_FRAMING

    def __init__(self, ws: web.WebSocketResponse, *args: Any) -> None:
        """`args`: Connection's, after the transport (client_id, principal, ip, ...)."""
        writer = ws._writer
        assert writer is not None, "connection made before the handshake"
        super().__init__(writer.transport, *args)
        self.ws = ws

    def frame_reply(self, payload: bytes) -> bytes:
        return text_frame(payload)

    def _close(self, code: int, reason: str) -> None:
        # The endpoint awaits this task before it returns, which also keeps it referenced.
        self.closer = asyncio.get_running_loop().create_task(
            self.ws.close(code=code, message=reason.encode(), drain=False)
        )


class CompressedWsConnection(WsConnection):
    """permessage-deflate: frames are per socket and go through aiohttp's writer, in order."""

    __slots__ = ("_compressed", "_sender")

    def __init__(self, ws: web.WebSocketResponse, *args: Any) -> None:
        super().__init__(ws, *args)
        self._compressed: deque[bytes] = deque()
        self._sender: asyncio.Task[None] | None = None

    @property
    def compressed(self) -> bool:
        return True

    def buffered(self) -> int:
        return super().buffered() + sum(map(len, self._compressed))

    def write(self, wire: bytes, payload: bytes) -> bool:
        if self.closing:
            return False
        self._compressed.append(payload)
        if len(self._compressed) == 1:
            self._sender = asyncio.get_running_loop().create_task(self._send_compressed())
        if self.buffered() > self.limit:
            self.drop(SLOW_CONSUMER)
            return False
        return True

    async def _send_compressed(self) -> None:
        queue = self._compressed
        try:
            while queue and not self.closing:
                await self.ws.send_frame(queue[0], WSMsgType.TEXT)
                queue.popleft()
        except (ConnectionError, RuntimeError):
            queue.clear()

    def _close(self, code: int, reason: str) -> None:
        self._compressed.clear()
        super()._close(code, reason)


def open_connection(ws: web.WebSocketResponse, *args: Any) -> WsConnection:
    """The connection class for this socket: compressing or not."""
    cls = CompressedWsConnection if ws.compress else WsConnection
    return cls(ws, *args)
