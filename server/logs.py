"""Logging: one line per event, as text or JSON (`logging.format`)."""

from __future__ import annotations

import logging
import sys

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from server import codec
from server.config import LoggingConfig


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": codec.isotime(codec.datetime.fromtimestamp(record.created, codec.UTC)),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return codec.dumps(line).decode()


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
        self.logger.info(
            '%s "%s %s HTTP/%d.%d" %d %d %.1fms "%s"',
            request.remote,
            request.method,
            target,
            request.version.major,
            request.version.minor,
            response.status,
            response.body_length,
            time_ * 1000,
            request.headers.get("User-Agent", "-"),
        )
