"""Background jobs (aiojobs), started by app.jobs_ctx."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from prometheus_client import Gauge

from server.bus import Bus
from server.notify import Notifier
from server.storage import Storage, StorageError

log = logging.getLogger(__name__)

# How often STATUS= is refreshed when no watchdog sets a faster pace.
STATUS_SECONDS = 10.0
# How often sensorcast_dependency_up is refreshed.
DEPENDENCY_SECONDS = 15.0


async def maintain_bus(bus: Bus) -> None:
    """The bus backend's upkeep, every `maintain_interval` seconds: expired history trimmed
    and idle channels evicted (local); this instance's presence refreshed and dead
    instances' members expired, with `user_left` (redis)."""
    while True:
        await asyncio.sleep(bus.backend.maintain_interval)
        try:
            dropped = await bus.maintain()
        except Exception:
            log.exception("bus upkeep failed; trying again next time")
            continue
        if dropped:
            log.debug("bus upkeep dropped %d items", dropped)


def connections_status(count: int) -> str:
    return f"{count} connection{'' if count == 1 else 's'}"


async def systemd_heartbeat(notifier: Notifier, connections: Callable[[], int]) -> None:
    """WATCHDOG=1 every half $WATCHDOG_USEC and STATUS= with the connection count.

    It runs on the event loop on purpose: a loop blocked longer than WatchdogSec sends
    nothing, and systemd restarts the service.
    """
    interval = notifier.watchdog_interval
    while True:
        if interval is not None:
            notifier.watchdog()
        notifier.status(connections_status(connections()))
        await asyncio.sleep(interval or STATUS_SECONDS)


async def watch_dependencies(
    storage: Storage, up: Gauge, others: Mapping[str, Callable[[], bool | None]] = {}
) -> None:
    """sensorcast_dependency_up: database 1 while it answers a ping; each of `others`
    (redis, mqtt) as its own state says (None: not in use, no sample)."""
    while True:
        try:
            await storage.ping()
            up.labels("database").set(1)
        except StorageError:
            up.labels("database").set(0)
        for name, state in others.items():
            value = state()
            if value is not None:
                up.labels(name).set(int(value))
        await asyncio.sleep(DEPENDENCY_SECONDS)
