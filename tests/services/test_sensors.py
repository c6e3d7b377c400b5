"""SensorsService on both storage backends: results, errors, and what it publishes."""

from collections.abc import AsyncIterator
from datetime import datetime

import pytest

from server.auth import Principal
from server.bus import Bus, Publication
from server.bus.local import LocalBackend
from server.errors import NotFound, ValidationFailed
from server.services.paging import decode_id_cursor, encode_cursor
from server.services.sensors import SensorsService
from server.storage import Storage

# The storage fixtures run every test here on SQLite and on PostgreSQL.
from tests.storage.conftest import backend, migrated, open_db, pg_server_url, storage  # noqa: F401

ADMIN = Principal(sub="ana", role="admin")


class Recorder:
    def __init__(self) -> None:
        self.publications: list[Publication] = []

    async def __call__(self, batch: list[Publication]) -> None:
        self.publications.extend(batch)


@pytest.fixture
async def published() -> Recorder:
    return Recorder()


@pytest.fixture
async def service(migrated: Storage, published: Recorder) -> AsyncIterator[SensorsService]:  # noqa: F811
    bus = Bus(LocalBackend(100, 60.0))
    bus.on_publication.append(published)
    await bus.start()
    yield SensorsService(migrated, bus)
    await bus.stop()


async def test_create_sensor_fills_defaults_and_publishes_once_to_both_channels(
    service: SensorsService, published: Recorder
):
    sensor = await service.create_sensor({"type": "temperature"}, by=ADMIN)

    assert sensor["type"] == sensor["tipo"] == "temperature"
    assert sensor["model"] is sensor["modelo"] is None
    assert (sensor["name"], sensor["unit"], sensor["location_id"]) == (None, None, None)
    assert (sensor["thresholds"], sensor["metadata"]) == ({}, {})
    assert sensor["created_at"] == sensor["updated_at"]
    assert datetime.fromisoformat(sensor["created_at"]).utcoffset() is not None
    [pub] = published.publications
    assert pub.channels == ("sensors", f"sensors:{sensor['id']}")
    assert pub.type == "entity_event"
    assert pub.body == {
        "entity_type": "sensor",
        "event_type": "created",
        "entity_id": sensor["id"],
        "data": sensor,
        "metadata": {"action": "create_sensor", "user": "ana"},
    }


async def test_sensor_with_unknown_location_is_422_on_location_id_and_publishes_nothing(
    service: SensorsService, published: Recorder
):
    with pytest.raises(ValidationFailed) as caught:
        await service.create_sensor({"type": "t", "location_id": 999}, by=ADMIN)

    assert list(caught.value.details) == ["location_id"]
    assert published.publications == []
    assert (await service.list_sensors(10))["items"] == []


async def test_patch_changes_only_given_fields_and_put_resets_the_rest(service: SensorsService):
    place = await service.create_location({"name": "lab"}, by=ADMIN)
    sensor = await service.create_sensor(
        {"type": "t", "unit": "C", "location_id": place["id"], "metadata": {"a": 1}}, by=ADMIN
    )

    patched = await service.update_sensor(sensor["id"], {"model": "DHT22"}, by=ADMIN)
    replaced = await service.replace_sensor(sensor["id"], {"type": "h"}, by=ADMIN)

    assert (patched["model"], patched["unit"], patched["location_id"]) == (
        "DHT22",
        "C",
        place["id"],
    )
    assert patched["metadata"] == {"a": 1}
    assert patched["updated_at"] >= sensor["updated_at"]
    assert patched["created_at"] == sensor["created_at"]
    assert (replaced["type"], replaced["model"], replaced["unit"]) == ("h", None, None)
    assert (replaced["location_id"], replaced["metadata"]) == (None, {})


async def test_empty_patch_returns_the_object_and_publishes_nothing(
    service: SensorsService, published: Recorder
):
    place = await service.create_location({"name": "lab"}, by=ADMIN)
    published.publications.clear()

    assert await service.update_location(place["id"], {}, by=ADMIN) == place
    assert published.publications == []


async def test_unknown_ids_raise_not_found_for_every_call(service: SensorsService):
    for call in (
        service.get_sensor(5),
        service.update_sensor(5, {"unit": "C"}, by=ADMIN),
        service.replace_sensor(5, {"type": "t"}, by=ADMIN),
        service.delete_sensor(5, by=ADMIN),
        service.get_location(5),
        service.update_location(5, {}, by=ADMIN),
        service.delete_location(5, by=ADMIN),
    ):
        with pytest.raises(NotFound):
            await call


async def test_deleting_a_location_unlinks_its_sensors_and_publishes_the_last_object(
    service: SensorsService, published: Recorder
):
    place = await service.create_location({"name": "lab", "latitude": 40.4}, by=ADMIN)
    sensor = await service.create_sensor({"type": "t", "location_id": place["id"]}, by=ADMIN)

    await service.delete_location(place["id"], by=ADMIN)

    assert (await service.get_sensor(sensor["id"]))["location_id"] is None
    last = published.publications[-1]
    assert last.channels == ("locations",)
    assert last.body["event_type"] == "deleted"
    assert last.body["data"] == place


async def test_pages_follow_ids_and_filters(service: SensorsService):
    place = await service.create_location({"name": "lab"}, by=ADMIN)
    for n in range(5):
        location_id = place["id"] if n % 2 else None
        await service.create_sensor(
            {"type": "t" if n < 3 else "h", "location_id": location_id}, by=ADMIN
        )

    first = await service.list_sensors(2)
    second = await service.list_sensors(2, first["next_cursor"])
    last = await service.list_sensors(2, second["next_cursor"])
    at_place = await service.list_sensors(10, location_id=place["id"])
    humidity = await service.list_sensors(10, type="h")

    ids = [s["id"] for page in (first, second, last) for s in page["items"]]
    assert ids == sorted(ids)
    assert len(set(ids)) == 5
    assert last["next_cursor"] is None
    assert [s["location_id"] for s in at_place["items"]] == [place["id"], place["id"]]
    assert [s["type"] for s in humidity["items"]] == ["h", "h"]


@pytest.mark.parametrize("cursor", ["garbage", "aWQ6eA", encode_cursor(1) + "!!", "%%%"])
def test_a_cursor_the_server_did_not_make_is_422(cursor: str):
    with pytest.raises(ValidationFailed) as caught:
        decode_id_cursor(cursor)

    assert list(caught.value.details) == ["cursor"]


def test_cursor_round_trips_its_id():
    assert decode_id_cursor(encode_cursor(123456)) == 123456
    assert decode_id_cursor(None) is None
