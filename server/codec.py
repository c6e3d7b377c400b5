"""JSON in and out, through orjson (bytes, not str: that is what goes on the wire)."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["UTC", "datetime", "dumps", "isotime", "loads", "utcnow"]
from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError

# Non-str dict keys and numpy-free: OPT_NON_STR_KEYS lets {sensor_id: ...} maps through.
_OPTS = orjson.OPT_NON_STR_KEYS


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=_OPTS)


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    return orjson.loads(data)


def utcnow() -> datetime:
    return datetime.now(UTC)


def isotime(moment: datetime | None = None) -> str:
    """ISO 8601 UTC with a Z, millisecond precision: what every frame's `timestamp` carries."""
    moment = moment or datetime.now(UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
