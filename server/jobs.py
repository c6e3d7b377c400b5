"""Background jobs (aiojobs), started by app.jobs_ctx."""

from __future__ import annotations

import asyncio
import logging

from server.bus import Bus

log = logging.getLogger(__name__)


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
