"""Background jobs (aiojobs): every job the server runs, and jobs_ctx that starts them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import timedelta

import aiojobs
from aiohttp import web
from prometheus_client import Gauge

from server import codec
from server.api import sse
from server.bus import Bus
from server.keys import BUS, CONFIG, HUB, JOBS, METRICS, MQTT, NOTIFIER, SERVICES, SSE_STREAMS
from server.notify import Notifier
from server.services import Services
from server.storage import Storage, StorageError
from server.storage.readings import delete_readings_before

log = logging.getLogger(__name__)

# How often STATUS= is refreshed when no watchdog sets a faster pace.
STATUS_SECONDS = 10.0
# How often sensorcast_dependency_up is refreshed.
DEPENDENCY_SECONDS = 15.0
# How often readings past retention.readings_days are deleted.
RETENTION_SECONDS = 3600.0


async def jobs_ctx(app: web.Application) -> AsyncIterator[None]:
    """Background jobs; at shutdown they are given shutdown_timeout to finish."""
    scheduler = app[JOBS] = aiojobs.Scheduler(close_timeout=app[CONFIG].server.shutdown_timeout)
    await scheduler.spawn(maintain_bus(app[BUS]), name="bus-upkeep")
    await scheduler.spawn(
        sse.keepalive(app[SSE_STREAMS], app[CONFIG].sse.keepalive), name="sse-keepalive"
    )
    await scheduler.spawn(
        retention(app[SERVICES], app[CONFIG].retention.readings_days), name="retention"
    )
    await scheduler.spawn(
        watch_dependencies(
            app[SERVICES].storage,
            app[METRICS].dependency_up,
            {"redis": lambda: _redis_up(app), "mqtt": lambda: _mqtt_up(app)},
        ),
        name="dependency-check",
    )
    notifier = app[NOTIFIER]
    if notifier.enabled:
        hub = app[HUB]
        await scheduler.spawn(
            systemd_heartbeat(notifier, lambda: len(hub.clients)), name="systemd-heartbeat"
        )
    yield
    await scheduler.close()
    notifier.close()


def _redis_up(app: web.Application) -> bool | None:
    if app[CONFIG].bus.backend != "redis":
        return None
    return bool(app[BUS].backend.health()["status"] == "ok")


def _mqtt_up(app: web.Application) -> bool | None:
    bridge = app.get(MQTT)
    return bridge.describe()["state"] == "connected" if bridge is not None else None


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


async def expire_readings(storage: Storage, days: int) -> int:
    """Delete readings older than `days` days (0: keep everything); returns how many."""
    if days <= 0:
        return 0
    deleted = await delete_readings_before(storage, codec.utcnow() - timedelta(days=days))
    log.info("retention deleted %d readings older than %d days", deleted, days)
    return deleted


async def retention(services: Services, days: int) -> None:
    """Hourly: readings past retention.readings_days, notifications past
    notifications.history_size. First pass at start: a server restarted more often than
    hourly still trims."""
    while True:
        try:
            await expire_readings(services.storage, days)
            trimmed = await services.notifications.trim()
            if trimmed:
                log.info("retention deleted %d notifications past history_size", trimmed)
        except StorageError as exc:
            log.warning("retention skipped this pass: %s", exc)
        await asyncio.sleep(RETENTION_SECONDS)
