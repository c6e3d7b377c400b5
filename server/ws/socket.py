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

from server.bus import Framing
from server.hub.connection import Connection
from server.ws.frames import close_reason, text_frame

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

    def _sendable(self) -> bool:
        """No data frame after a Close (RFC 6455 §5.5.1): not ours, nor one aiohttp sent
        itself (a 1009, a missed pong), nor once the peer's arrived."""
        ws = self.ws
        return not (self.closing or ws._closed or ws._closing or self._transport.is_closing())

    def _close(self, code: int, reason: str) -> None:
        # The endpoint awaits this task before it returns, which also keeps it referenced.
        # The reason is cut on a UTF-8 boundary: a split character makes browsers see 1007.
        self.closer = asyncio.get_running_loop().create_task(
            self.ws.close(code=code, message=close_reason(reason), drain=False)
        )


class CompressedWsConnection(WsConnection):
    """permessage-deflate: frames are per socket and go through aiohttp's writer, in order."""

    __slots__ = ("_compressed", "_compressed_bytes", "_sender")

    def __init__(self, ws: web.WebSocketResponse, *args: Any) -> None:
        super().__init__(ws, *args)
        self._compressed: deque[bytes] = deque()
        self._compressed_bytes = 0
        self._sender: asyncio.Task[None] | None = None

    @property
    def compressed(self) -> bool:
        return True

    def buffered(self) -> int:
        return super().buffered() + self._compressed_bytes

    def write(self, wire: bytes, payload: bytes) -> bool:
        if not self._sendable():
            return False
        self._compressed.append(payload)
        self._compressed_bytes += len(payload)
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send_compressed())
        return self.judge()

    async def _send_compressed(self) -> None:
        queue = self._compressed
        try:
            while queue and self._sendable():
                payload = queue.popleft()
                self._compressed_bytes -= len(payload)
                # close_soon may clear the queue while this awaits: nothing is popped after.
                await self.ws.send_frame(payload, WSMsgType.TEXT)
        except (ConnectionError, RuntimeError):
            pass
        finally:
            queue.clear()
            self._compressed_bytes = 0
            self._sender = None

    def _release(self) -> None:
        super()._release()
        self._compressed.clear()
        self._compressed_bytes = 0


def open_connection(ws: web.WebSocketResponse, *args: Any) -> WsConnection:
    """The connection class for this socket: compressing or not."""
    cls = CompressedWsConnection if ws.compress else WsConnection
    return cls(ws, *args)
