"""Python values <-> SQLite text, at the backend's edge and never in queries.

SQLite has no timestamp, JSON or boolean type, so the SQLite migrations declare such
columns as TIMESTAMPTZ, JSON and BOOLEAN, and values are converted here:
- in: every parameter is adapted (a datetime becomes fixed-width ISO-8601 UTC text,
  `2024-05-01T12:00:00.000000Z`, so text order is time order and `ts >= ?` compares
  correctly; a dict/list becomes JSON text);
- out: connections opened with detect_types=PARSE_DECLTYPES use the converters registered
  below for those three declared types, so a selected column comes back as
  datetime/dict/bool. Only a column read straight from a table has a declared type: an
  expression such as `max(ts)` comes back as the stored text (see `parse_timestamp`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from server import codec
from server.storage import Row, check_aware

__all__ = ["dict_row", "format_timestamp", "parse_timestamp", "sql_params", "sql_rows"]


def format_timestamp(moment: datetime) -> str:
    """Fixed-width UTC text, microseconds always present: text order is time order.

    orjson writes a datetime ~10x faster than isoformat (this runs per stored reading);
    it leaves out a zero fraction, which is put back."""
    moment = check_aware(moment)
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    text = orjson.dumps(moment, option=orjson.OPT_UTC_Z).decode()
    return text[1:-1] if moment.microsecond else text[1:-2] + ".000000Z"


def parse_timestamp(text: str | bytes) -> datetime:
    """The aware UTC datetime of a stored timestamp (for expressions like max(ts))."""
    if isinstance(text, bytes):
        text = text.decode()
    moment = datetime.fromisoformat(text)
    # Rows written by hand (sqlite3 shell, CURRENT_TIMESTAMP) may lack the Z: they are UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _parse_bool(raw: bytes) -> bool:
    return raw not in (b"0", b"0.0")


# sqlite3 keeps converters in one process-wide table: there is no per-connection one. The
# names are the declared types of our SQLite migrations, and only connections opened with
# detect_types (ours; nothing else in this process uses sqlite3) consult the table.
sqlite3.register_converter("TIMESTAMPTZ", parse_timestamp)
sqlite3.register_converter("JSON", codec.loads)
sqlite3.register_converter("BOOLEAN", _parse_bool)


# Values sqlite3 binds as they are: the common case, checked first.
_PLAIN = frozenset({int, float, str, bytes, type(None)})


def _adapt(value: Any) -> Any:
    # Per call rather than sqlite3.register_adapter: that table is process-wide too, and
    # its datetime entry is Python's own (deprecated) one.
    if type(value) in _PLAIN:
        return value
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, dict | list):
        return codec.dumps(value).decode()
    return value


def sql_params(args: Sequence[Any]) -> tuple[Any, ...]:
    return tuple([_adapt(value) for value in args])


def sql_rows(rows: Iterable[Sequence[Any]]) -> list[tuple[Any, ...]]:
    """sql_params for a batch; a timestamp shared by several rows (the metrics of one
    reading) is formatted once."""
    stamps: dict[datetime, str] = {}
    out = []
    for row in rows:
        values = []
        for value in row:
            if type(value) in _PLAIN:
                values.append(value)
            elif isinstance(value, datetime):
                text = stamps.get(value)
                if text is None:
                    text = stamps[value] = format_timestamp(value)
                values.append(text)
            else:
                values.append(_adapt(value))
        out.append(tuple(values))
    return out


def dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> Row:
    return {col[0]: value for col, value in zip(cursor.description, row, strict=True)}
