"""Server-side publishing: arbitrary events and system events into channels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from server.bus import ENVELOPE_KEYS, Bus, Publication

# Frame types an event object may carry as they are; anything else is wrapped as `event`.
FRAME_TYPES = frozenset({"system_event", "entity_event", "notification", "message"})


def receipt(pub: Publication) -> dict[str, Any]:
    """What a publish call answers: where the publication landed, for recovery."""
    channel = pub.channels[0]
    return {"channel": channel, "offset": pub.offsets[channel], "epoch": pub.epoch}


class EventService:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def publish(self, channels: Sequence[str], event: dict[str, Any]) -> dict[str, Any]:
        """An object whose `type` is a publication frame type is sent as that frame (its
        envelope keys dropped); anything else is wrapped as `{type: "event", data}`."""
        kind = event.get("type")
        if isinstance(kind, str) and kind in FRAME_TYPES:
            body = {k: v for k, v in event.items() if k not in ENVELOPE_KEYS}
            if kind == "system_event":
                # Clients read all three fields of a system_event (SPEC §4).
                body = {"level": "info", "message": "", "data": {}, **body}
        else:
            kind, body = "event", {"data": event}
        return receipt(await self.bus.publish(channels, kind, body))

    async def system_event(
        self,
        channel: str,
        message: str,
        level: str = "info",
        data: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body = {"level": level, "message": message, "data": data or {}}
        return receipt(await self.bus.publish([channel], "system_event", body))
