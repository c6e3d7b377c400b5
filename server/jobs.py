"""Background jobs run by the app's aiojobs scheduler (see app.jobs_ctx)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import Gauge

from server.notify import Notifier
from server.storage import Storage, StorageError

# How often STATUS= is refreshed when no watchdog sets a faster pace.
STATUS_SECONDS = 10.0
# How often sensorcast_dependency_up is refreshed.
DEPENDENCY_SECONDS = 15.0


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
    storage: Storage, up: Gauge, mqtt_up: Callable[[], bool | None] = lambda: None
) -> None:
    """sensorcast_dependency_up: database 1 while it answers; mqtt 1 while the bridge is
    connected (when there is one). Redis joins with the redis bus."""
    while True:
        try:
            await storage.ping()
            up.labels("database").set(1)
        except StorageError:
            up.labels("database").set(0)
        mqtt = mqtt_up()
        if mqtt is not None:
            up.labels("mqtt").set(int(mqtt))
        await asyncio.sleep(DEPENDENCY_SECONDS)
