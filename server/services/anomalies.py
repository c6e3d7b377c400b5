"""Anomalies: a reading's metric outside its sensor's thresholds (found as readings are
ingested, services/readings.py); their object and event shapes, list, resolve. Pure of HTTP.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from server import codec
from server.bus import Bus
from server.errors import Conflict, NotFound
from server.services.paging import decode_id_cursor, encode_cursor
from server.services.timestamps import iso
from server.storage import Row, Storage
from server.storage import readings as queries

if TYPE_CHECKING:
    from server.auth import Principal

# What Bus.publish_many takes: (channels, frame type, body).
Event = tuple[tuple[str, ...], str, dict[str, Any]]


def anomaly_event(event_type: str, anomaly: dict[str, Any], **meta: Any) -> Event:
    """An anomaly's entity_event, for `anomalies` and its sensor's channel."""
    body = {
        "entity_type": "anomaly",
        "event_type": event_type,
        "entity_id": anomaly["id"],
        "data": anomaly,
        "metadata": {"action": event_type, **meta},
    }
    return ("anomalies", f"sensors:{anomaly['sensor_id']}"), "entity_event", body


def anomaly_object(row: Row) -> dict[str, Any]:
    resolved_at = row["resolved_at"]
    return {
        "id": row["id"],
        "sensor_id": row["sensor_id"],
        "metric": row["metric"],
        "value": row["value"],
        "min": row["min"],
        "max": row["max"],
        "timestamp": iso(row["ts"]),
        "resolved": row["resolved"],
        "resolved_at": None if resolved_at is None else codec.isotime(resolved_at),
        "created_at": codec.isotime(row["created_at"]),
    }


class AnomalyService:
    def __init__(self, storage: Storage, bus: Bus) -> None:
        self.storage = storage
        self.bus = bus

    async def publish(self, event_type: str, anomaly: dict[str, Any], **meta: Any) -> None:
        await self.bus.publish(*anomaly_event(event_type, anomaly, **meta))

    async def list(self, args: dict[str, Any]) -> dict[str, Any]:
        """Newest first."""
        limit = args["limit"]
        rows = await queries.select_anomalies(
            self.storage,
            sensor_id=args.get("sensor_id"),
            resolved=args.get("resolved"),
            before=decode_id_cursor(args.get("cursor")),
            limit=limit + 1,
        )
        cursor = encode_cursor(rows[limit - 1]["id"]) if len(rows) > limit else None
        return {"items": [anomaly_object(r) for r in rows[:limit]], "next_cursor": cursor}

    async def resolve(self, anomaly_id: int, by: Principal) -> dict[str, Any]:
        """Mark resolved and publish `anomaly_resolved`; 404 unknown, 409 already resolved."""
        row, changed = await queries.resolve_anomaly(self.storage, anomaly_id, codec.utcnow())
        if row is None:
            raise NotFound(f"anomaly {anomaly_id} not found")
        if not changed:
            raise Conflict(f"anomaly {anomaly_id} is already resolved")
        anomaly = anomaly_object(row)
        await self.publish("anomaly_resolved", anomaly, user=by.sub)
        return anomaly
