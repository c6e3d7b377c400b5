"""Clients that behave like a real network link on loopback, for slow-consumer tests.

On loopback the kernel takes a burst of megabytes at once; on a real link it does not. A
64 KiB receive buffer and an Ethernet-sized segment (TCP_MAXSEG 1448), both set before
connect, keep the server's transport holding most of a big burst, as a real link would.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from typing import Any

import aiohttp

RCVBUF = 64 * 1024
MSS = 1448


def link_socket(addr_info: Any = None) -> socket.socket:
    """A TCP socket with a small receive buffer and segment, not connected yet (usable as
    aiohttp's TCPConnector(socket_factory=...))."""
    family = addr_info[0] if addr_info else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, MSS)
    return sock


def link_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(socket_factory=link_socket))


class RawSocket:
    """A WebSocket client on a link-like socket that reads only when told to (a stalled
    dashboard), and parses the server's frames itself."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    @classmethod
    async def open(cls, host: str, port: int, path: str, deflate: bool = False) -> RawSocket:
        sock = link_socket()
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, (host, port))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            + ("Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else "")
            + "\r\n"
        )
        await loop.sock_sendall(sock, request.encode())
        raw = cls(sock)
        while b"\r\n\r\n" not in raw.buffer:
            raw.buffer += await raw._recv()
        head, _, raw.buffer = raw.buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return raw

    async def _recv(self) -> bytes:
        data = await asyncio.wait_for(
            asyncio.get_running_loop().sock_recv(self.sock, 1 << 16), timeout=10
        )
        if not data:
            raise ConnectionError("server closed the connection")
        return data

    async def frame(self) -> tuple[int, bytes]:
        """The next complete frame: (opcode, payload)."""
        while True:
            parsed = self._parse()
            if parsed is not None:
                return parsed
            self.buffer += await self._recv()

    def _parse(self) -> tuple[int, bytes] | None:
        buf = self.buffer
        if len(buf) < 2:
            return None
        opcode, n = buf[0] & 0x0F, buf[1] & 0x7F
        assert buf[0] & 0x80, "fragmented frame"
        assert not buf[1] & 0x80, "server frames are unmasked"
        at = 2
        if n == 126:
            if len(buf) < 4:
                return None
            (n,) = struct.unpack("!H", buf[2:4])
            at = 4
        elif n == 127:
            if len(buf) < 10:
                return None
            (n,) = struct.unpack("!Q", buf[2:10])
            at = 10
        if len(buf) < at + n:
            return None
        self.buffer = buf[at + n :]
        return opcode, buf[at : at + n]

    async def until_close(self) -> tuple[list[bytes], int, str]:
        """Read on to the close frame: (text payloads before it, close code, reason)."""
        texts: list[bytes] = []
        while True:
            opcode, payload = await self.frame()
            if opcode == 0x1:
                texts.append(payload)
            elif opcode == 0x8:
                (code,) = struct.unpack("!H", payload[:2])
                return texts, code, payload[2:].decode("utf-8")

    async def send(self, opcode: int, payload: bytes) -> None:
        """A masked client frame."""
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = bytes((0x80 | opcode, 0x80 | n))
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        await asyncio.get_running_loop().sock_sendall(self.sock, head + mask + masked)

    def close(self) -> None:
        self.sock.close()
