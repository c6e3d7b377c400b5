"""Server frames: JSON payloads and the WebSocket framing we do ourselves.

Server-to-client frames are unmasked, so an uncompressed frame's bytes are the same for
every recipient: the hub frames a publication once and writes those bytes to each socket.
"""

from __future__ import annotations

import struct
from typing import Any

from server import codec
from server.errors import ApiError

# Error codes a frame may carry (SPEC §4); any other ApiError code goes out as `internal`.
ERROR_CODES = frozenset(
    {
        "bad_request",
        "invalid_json",
        "unknown_type",
        "unauthorized",
        "forbidden",
        "not_found",
        "conflict",
        "rate_limited",
        "too_large",
        "internal",
    }
)

# Close codes (SPEC §4).
CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHORIZED = 4001
CLOSE_FORBIDDEN = 4003
CLOSE_POLICY = 4008
CLOSE_DUPLICATE = 4009
CLOSE_GOING_AWAY = 1001
# 1009 (frame too big) is sent by aiohttp itself, from max_msg_size.

# A close frame's payload is at most 125 bytes: the 2-byte code, then the UTF-8 reason.
MAX_CLOSE_REASON = 123

_FIN_TEXT = 0x81


def close_reason(text: str) -> bytes:
    """The reason as UTF-8, cut to MAX_CLOSE_REASON bytes on a character boundary (a split
    character is invalid UTF-8: browsers then report 1007/1006 instead of our code)."""
    data = text.encode()
    if len(data) <= MAX_CLOSE_REASON:
        return data
    return data[:MAX_CLOSE_REASON].decode("utf-8", "ignore").encode()


def text_frame(payload: bytes) -> bytes:
    """A complete unmasked, uncompressed WebSocket text frame (RFC 6455 §5.2)."""
    n = len(payload)
    if n < 126:
        return bytes((_FIN_TEXT, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", _FIN_TEXT, 126, n) + payload
    return struct.pack("!BBQ", _FIN_TEXT, 127, n) + payload


def encode(type: str, **fields: Any) -> bytes:
    """A server frame's JSON: type, timestamp, then the fields."""
    return codec.dumps({"type": type, "timestamp": codec.isotime(), **fields})


def error(exc: ApiError, id: Any = None) -> bytes:
    code = exc.code if exc.code in ERROR_CODES else "internal"
    frame: dict[str, Any] = {"code": code, "message": exc.message}
    if id is not None:
        frame["id"] = id
    if exc.details is not None:
        frame["details"] = exc.details
    return encode("error", **frame)
