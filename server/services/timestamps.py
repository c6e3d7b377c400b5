"""Timestamps as readings show them (SPEC §4: UTC, Z, milliseconds) and as bodies and
cursors give them (ISO 8601 with an offset, or epoch seconds). Readings, anomalies and
predictions all show theirs this way."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import orjson


def iso(moment: datetime) -> str:
    """ISO 8601 UTC with Z and milliseconds, as every other timestamp (SPEC §4); a reading
    posted with microseconds is shown to the millisecond (stored as given).

    Written by orjson (~10x faster than isoformat: this runs per reading and per listed
    value), which gives microseconds or, when they are zero, no fraction."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    text = orjson.dumps(moment, option=orjson.OPT_UTC_Z).decode()
    if moment.microsecond == 0:
        return text[1:-2] + ".000Z"
    return text[1:-5] + "Z"


def parse_time(value: Any) -> datetime:
    """ISO 8601 with an offset (or Z), or epoch seconds; ValueError says what is wrong."""
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("Not an ISO 8601 time or epoch seconds.") from None
        if moment.utcoffset() is None:
            raise ValueError("An ISO 8601 time needs an offset or Z.")
        return moment.astimezone(UTC)
    if type(value) in (int, float) and math.isfinite(value):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError("Epoch seconds out of range.") from None
    raise ValueError("Not an ISO 8601 time or epoch seconds.")
