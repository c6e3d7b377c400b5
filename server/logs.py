"""Logging: one line per event, as text or JSON (`logging.format`).

JSON lines carry `ts`, `level`, `logger`, `message`, then the event's own fields: whatever a
call passes as `extra=` (`event`, `client_id`, `code`, `request_id`, ...).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from server import codec
from server.config import LoggingConfig

# What every LogRecord has: anything else on a record came from `extra=`.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": codec.isotime(codec.datetime.fromtimestamp(record.created, codec.UTC)),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in line:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        try:
            return codec.dumps(line).decode()
        except TypeError:
            # A field orjson cannot encode: its str() rather than no line at all.
            return codec.dumps(
                {
                    k: v if isinstance(v, str | int | float | bool | None) else str(v)
                    for k, v in line.items()
                }
            ).decode()


def setup_logging(config: LoggingConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if config.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.level)


class RedactingAccessLogger(AbstractAccessLogger):
    """One line per request, with `?token=` values blanked: tokens never reach the log."""

    def log(self, request: BaseRequest, response: StreamResponse, time_: float) -> None:
        query = request.rel_url.query
        target = request.path
        if query:
            redacted = [(k, "***" if k == "token" else v) for k, v in query.items()]
            target = str(request.rel_url.with_query(redacted))
        rid = response.headers.get("X-Request-ID", "-")
        self.logger.info(
            '%s "%s %s HTTP/%d.%d" %d %d %.1fms "%s" rid=%s',
            request.remote,
            request.method,
            target,
            request.version.major,
            request.version.minor,
            response.status,
            response.body_length,
            time_ * 1000,
            request.headers.get("User-Agent", "-"),
            rid,
            extra={
                "event": "request",
                "remote": request.remote,
                "method": request.method,
                "path": target,
                "status": response.status,
                "duration_ms": round(time_ * 1000, 1),
                "request_id": rid,
            },
        )
