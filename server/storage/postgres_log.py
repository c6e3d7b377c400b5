"""One traceback per outage from asyncpg's pool, then a summary line now and then.

While the database is gone, asyncpg's pool tries to restore its min_size connections and
logs a WARNING with the full traceback on every failed attempt (1 s apart at first).
OutageLog, a filter on the `asyncpg.pool` logger, lets the first one through as it is,
drops the next ones but counts them, turns one into a single line every
SUMMARY_SECONDS, and says once when connections succeed again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["POOL_LOGGER", "SUMMARY_SECONDS", "OutageLog"]

POOL_LOGGER = "asyncpg.pool"
SUMMARY_SECONDS = 60.0


class OutageLog(logging.Filter):
    def __init__(
        self, log: logging.Logger, where: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self._log = log
        self._where = where
        self._clock = clock
        self.active = False
        self._failures = 0
        self._since_summary = 0
        self._summary_at = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info is None:
            return True
        self._failures += 1
        if not self.active:
            self.active = True
            self._summary_at = self._clock()
            return True
        self._since_summary += 1
        if self._clock() - self._summary_at < SUMMARY_SECONDS:
            return False
        error = record.exc_info[1]
        record.msg = "PostgreSQL at %s still unreachable: %d more failed reconnects (last: %s)"
        record.args = (self._where, self._since_summary, f"{type(error).__name__}: {error}")
        record.exc_info = None
        record.exc_text = None
        self._summary_at = self._clock()
        self._since_summary = 0
        return True

    def recovered(self) -> None:
        """A connection answered again: close the outage with one line."""
        if not self.active:
            return
        self._log.warning(
            "PostgreSQL at %s answers again after %d failed reconnects",
            self._where,
            self._failures,
        )
        self.active = False
        self._failures = self._since_summary = 0
