"""Locations and sensors: CRUD, keyset paging and the live `entity_event`s of each change.

Pure of HTTP: REST and the WebSocket `request` frame call the same methods with arguments
their schemas already validated, and get JSON-ready objects (timestamps as ISO 8601 UTC
strings) or an ApiError. Every change is committed before its event is published, so a
subscriber never hears of something a reader could not yet see.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from server import codec
from server.bus import Bus
from server.errors import Forbidden, NotFound, ValidationFailed
from server.services.paging import decode_id_cursor, encode_cursor
from server.storage import IntegrityError, Row, Storage
from server.storage import sensors as queries

if TYPE_CHECKING:
    from server.auth import Principal


def location_object(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "description": row["description"],
        "latitude": row["latitude"],
        "longitude": row["longitude"],
        "metadata": row["metadata"],
        "created_at": codec.isotime(row["created_at"]),
        "updated_at": codec.isotime(row["updated_at"]),
    }


def sensor_object(row: Row) -> dict[str, Any]:
    """A sensor as every client sees it; seed 004's `tipo`/`modelo` mirror type/model."""
    return {
        "id": row["id"],
        "name": row["name"],
        "type": row["type"],
        "model": row["model"],
        "unit": row["unit"],
        "location_id": row["location_id"],
        "thresholds": row["thresholds"],
        "metadata": row["metadata"],
        "created_at": codec.isotime(row["created_at"]),
        "updated_at": codec.isotime(row["updated_at"]),
        "tipo": row["type"],
        "modelo": row["model"],
        "device": row["device"],
    }


@dataclass(frozen=True, slots=True)
class _Kind:
    """What differs between the two entities: table, event name, channels, JSON shape."""

    table: str
    entity_type: str
    to_object: Callable[[Row], dict[str, Any]]
    # Events go to `channel` and, with per_entity, to `{channel}:{id}` too (SPEC §3).
    channel: str
    per_entity: bool

    def channels(self, entity_id: int) -> list[str]:
        return [self.channel, f"{self.channel}:{entity_id}"] if self.per_entity else [self.channel]

    def not_found(self, entity_id: int) -> NotFound:
        return NotFound(f"{self.entity_type} {entity_id} not found")


LOCATION = _Kind("locations", "location", location_object, "locations", False)
SENSOR = _Kind("sensors", "sensor", sensor_object, "sensors", True)


class SensorsService:
    """Locations and sensors. Writes take `by` (the caller) for the events' metadata.user.

    update_* is PATCH: only the given fields change (thresholds and metadata are replaced
    whole, not merged). replace_* is PUT: the given object becomes the whole entity, so an
    omitted optional field goes back to its default (null, or {} for the JSON fields).
    An update with no fields changes nothing and publishes nothing.
    """

    def __init__(self, storage: Storage, bus: Bus) -> None:
        self.storage = storage
        self.bus = bus

    # -- locations ------------------------------------------------------------------------

    async def list_locations(self, limit: int, cursor: str | None = None) -> dict[str, Any]:
        return await self._list(LOCATION, limit, cursor, {})

    async def get_location(self, location_id: int) -> dict[str, Any]:
        return await self._get(LOCATION, location_id)

    async def create_location(self, values: Mapping[str, Any], by: Principal) -> dict[str, Any]:
        return await self._create(LOCATION, _location_defaults(values), by)

    async def replace_location(
        self, location_id: int, values: Mapping[str, Any], by: Principal
    ) -> dict[str, Any]:
        return await self._update(LOCATION, location_id, _location_defaults(values), by)

    async def update_location(
        self, location_id: int, values: Mapping[str, Any], by: Principal
    ) -> dict[str, Any]:
        return await self._update(LOCATION, location_id, values, by)

    async def delete_location(self, location_id: int, by: Principal) -> None:
        """Its sensors stay, with location_id null (the foreign key does it); they get no
        event of their own."""
        await self._delete(LOCATION, location_id, by)

    # -- sensors --------------------------------------------------------------------------

    async def list_sensors(
        self,
        limit: int,
        cursor: str | None = None,
        location_id: int | None = None,
        type: str | None = None,
    ) -> dict[str, Any]:
        filters = {"location_id": location_id, "type": type}
        return await self._list(
            SENSOR, limit, cursor, {k: v for k, v in filters.items() if v is not None}
        )

    async def get_sensor(self, sensor_id: int) -> dict[str, Any]:
        return await self._get(SENSOR, sensor_id)

    async def create_sensor(self, values: Mapping[str, Any], by: Principal) -> dict[str, Any]:
        return await self._create(SENSOR, _sensor_defaults(values), by)

    async def replace_sensor(
        self, sensor_id: int, values: Mapping[str, Any], by: Principal
    ) -> dict[str, Any]:
        return await self._update(SENSOR, sensor_id, _sensor_defaults(values), by)

    async def update_sensor(
        self, sensor_id: int, values: Mapping[str, Any], by: Principal
    ) -> dict[str, Any]:
        return await self._update(SENSOR, sensor_id, values, by)

    async def check_device(self, sensor_ids: Iterable[int], device: str) -> None:
        """Forbidden unless every existing sensor among these belongs to `device`."""
        foreign = await queries.select_not_of_device(self.storage, sensor_ids, device)
        if foreign:
            raise Forbidden(
                f"device {device!r} may only post readings for its own sensors",
                {"sensor_ids": foreign},
            )

    async def delete_sensor(self, sensor_id: int, by: Principal) -> None:
        """Its readings, anomalies and predictions go with it (ON DELETE CASCADE)."""
        await self._delete(SENSOR, sensor_id, by)

    # -- shared ---------------------------------------------------------------------------

    async def _list(
        self, kind: _Kind, limit: int, cursor: str | None, filters: dict[str, Any]
    ) -> dict[str, Any]:
        after = decode_id_cursor(cursor) or 0
        # One row more than asked says whether another page exists.
        rows = await queries.select_page(self.storage, kind.table, after, limit + 1, filters)
        more = len(rows) > limit
        rows = rows[:limit]
        return {
            "items": [kind.to_object(row) for row in rows],
            "next_cursor": encode_cursor(rows[-1]["id"]) if more else None,
        }

    async def _get(self, kind: _Kind, entity_id: int) -> dict[str, Any]:
        row = await queries.select_row(self.storage, kind.table, entity_id)
        if row is None:
            raise kind.not_found(entity_id)
        return kind.to_object(row)

    async def _create(
        self, kind: _Kind, values: Mapping[str, Any], by: Principal
    ) -> dict[str, Any]:
        with _location_must_exist(values):
            row = await queries.insert_row(self.storage, kind.table, values, codec.utcnow())
        return await self._changed(kind, "created", row, by)

    async def _update(
        self, kind: _Kind, entity_id: int, values: Mapping[str, Any], by: Principal
    ) -> dict[str, Any]:
        if not values:
            return await self._get(kind, entity_id)
        with _location_must_exist(values):
            row = await queries.update_row(
                self.storage, kind.table, entity_id, values, codec.utcnow()
            )
        if row is None:
            raise kind.not_found(entity_id)
        return await self._changed(kind, "updated", row, by)

    async def _delete(self, kind: _Kind, entity_id: int, by: Principal) -> None:
        row = await queries.delete_row(self.storage, kind.table, entity_id)
        if row is None:
            raise kind.not_found(entity_id)
        await self._changed(kind, "deleted", row, by)

    async def _changed(
        self, kind: _Kind, event_type: str, row: Row, by: Principal
    ) -> dict[str, Any]:
        """Publish the committed change as one entity_event; return the object."""
        obj: dict[str, Any] = kind.to_object(row)
        body = {
            "entity_type": kind.entity_type,
            "event_type": event_type,
            "entity_id": obj["id"],
            "data": obj,
            "metadata": {"action": action_name(event_type, kind.entity_type), "user": by.sub},
        }
        await self.bus.publish(kind.channels(obj["id"]), "entity_event", body)
        return obj


# Seed 004's clients read metadata.action as `create_sensor`: its names, for every entity.
_VERBS = {"created": "create", "updated": "update", "deleted": "delete"}


def action_name(event_type: str, entity_type: str) -> str:
    """`created` + `sensor` -> `create_sensor` (seed 004's metadata.action)."""
    return f"{_VERBS[event_type]}_{entity_type}"


def _location_defaults(values: Mapping[str, Any]) -> dict[str, Any]:
    return {"description": None, "latitude": None, "longitude": None, "metadata": {}, **values}


def _sensor_defaults(values: Mapping[str, Any]) -> dict[str, Any]:
    defaults = {"name": None, "model": None, "unit": None, "location_id": None}
    return {**defaults, "thresholds": {}, "metadata": {}, **values}


@contextmanager
def _location_must_exist(values: Mapping[str, Any]) -> Iterator[None]:
    """A foreign-key refusal on a sensor write means its location_id names no location:
    422 on that field (the only constraint the schemas have not already checked)."""
    try:
        yield
    except IntegrityError as exc:
        location_id = values.get("location_id")
        if location_id is None:
            raise
        raise ValidationFailed(
            details={"location_id": [f"location {location_id} does not exist"]}
        ) from exc
