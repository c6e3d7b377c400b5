"""Opaque keyset cursors for every list: base64 of the JSON of the last row's key."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from server import codec
from server.errors import ValidationFailed

_NOT_OURS = {"cursor": ["Not a cursor this server returned."]}


def encode_cursor(key: Any) -> str:
    return base64.urlsafe_b64encode(codec.dumps(key)).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> Any:
    """The key a cursor carries (None for the first page); 422 for one we did not make."""
    if not cursor:
        return None
    try:
        return codec.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, TypeError):
        raise ValidationFailed(details=_NOT_OURS) from None


def decode_id_cursor(cursor: str | None) -> int | None:
    """A cursor over integer ids: the id a page continues from, None for the first page."""
    key = decode_cursor(cursor)
    if key is None or (type(key) is int and 0 < key < 2**63):
        return key
    raise ValidationFailed(details=_NOT_OURS)


def not_ours() -> ValidationFailed:
    return ValidationFailed(details=_NOT_OURS)
