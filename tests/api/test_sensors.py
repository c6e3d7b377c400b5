"""Sensors over REST and WebSocket `request`, on SQLite and PostgreSQL, and their live events."""

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

# backend, config, open_db, pg_server_url: fixtures, so the app runs on [sqlite, postgres].
from tests.api.test_locations import (  # noqa: F401
    backend,
    config,
    open_db,
    pg_server_url,
    rest,
    ws_call,
)
from tests.api.test_system import ISO_UTC, Mint, error_of
from tests.conftest import Connect

SENSOR_KEYS = {
    "id", "name", "type", "model", "unit", "location_id", "thresholds", "metadata",
    "created_at", "updated_at", "tipo", "modelo", "device",
}  # fmt: skip
EVENT_KEYS = ("entity_type", "event_type", "entity_id", "data", "metadata")


async def make_location(client: TestClient, tok: str, name: str = "lab") -> dict[str, Any]:
    resp = await rest(client, "POST", "/api/v1/locations", tok, json={"name": name})
    assert resp.status == 201
    return await resp.json()


async def make_sensor(client: TestClient, tok: str, **body: Any) -> dict[str, Any]:
    resp = await rest(client, "POST", "/api/v1/sensors", tok, json={"type": "temperature", **body})
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def test_create_with_tipo_modelo_stores_type_model_and_mirrors_them(
    client: TestClient, connect: Connect, token: Mint
):
    place = await make_location(client, token())
    body = {"tipo": "temperatura", "modelo": "DHT22", "name": "t1", "unit": "C",
            "location_id": place["id"], "thresholds": {"temperatura": {"min": -5, "max": 40.5}},
            "metadata": {"floor": 2}}  # fmt: skip

    resp = await rest(client, "POST", "/api/v1/sensors", token(), json=body)
    sensor = await resp.json()

    assert resp.status == 201
    assert resp.headers["Location"] == f"/api/v1/sensors/{sensor['id']}"
    assert set(sensor) == SENSOR_KEYS
    assert (sensor["type"], sensor["tipo"], sensor["model"], sensor["modelo"]) == (
        "temperatura", "temperatura", "DHT22", "DHT22"
    )  # fmt: skip
    assert (sensor["name"], sensor["unit"], sensor["location_id"]) == ("t1", "C", place["id"])
    assert sensor["thresholds"] == {"temperatura": {"min": -5, "max": 40.5}}
    assert sensor["metadata"] == {"floor": 2}
    assert ISO_UTC.match(sensor["created_at"])
    assert await (await rest(client, "GET", f"/api/v1/sensors/{sensor['id']}")).json() == sensor
    assert await ws_call(await connect(), "sensors", "get", {"id": sensor["id"]}) == sensor


async def test_create_update_replace_delete_over_ws_equal_rest(
    client: TestClient, connect: Connect, token: Mint
):
    ws = await connect(params={"token": token("service")})

    created = await ws_call(ws, "sensors", "create", {"type": "humidity", "modelo": "SHT31"})
    updated = await ws_call(ws, "sensors", "update", {"id": created["id"], "unit": "%"})
    replaced = await ws_call(ws, "sensors", "replace", {"id": created["id"], "tipo": "co2"})
    path = f"/api/v1/sensors/{created['id']}"
    rest_after_replace = await (await rest(client, "GET", path)).json()
    deleted = await ws_call(ws, "sensors", "delete", {"id": created["id"]})

    assert (created["model"], created["modelo"], created["unit"]) == ("SHT31", "SHT31", None)
    assert (updated["model"], updated["unit"], updated["type"]) == ("SHT31", "%", "humidity")
    assert (replaced["type"], replaced["tipo"], replaced["model"], replaced["unit"]) == (
        "co2", "co2", None, None
    )  # fmt: skip
    assert rest_after_replace == replaced
    assert deleted is None
    await error_of(await rest(client, "GET", path), 404, "not_found")


async def test_put_replaces_whole_and_patch_changes_only_given_fields(
    client: TestClient, token: Mint
):
    place = await make_location(client, token())
    sensor = await make_sensor(client, token(), unit="C", location_id=place["id"],
                               thresholds={"t": {"max": 30}})  # fmt: skip
    path = f"/api/v1/sensors/{sensor['id']}"

    patched = await (await rest(client, "PATCH", path, token(), json={"modelo": "X1"})).json()
    put = await rest(client, "PUT", path, token(), json={"type": "t2"})
    put_without_type = await rest(client, "PUT", path, token(), json={"unit": "C"})

    assert (patched["model"], patched["unit"], patched["location_id"]) == ("X1", "C", place["id"])
    assert patched["thresholds"] == {"t": {"min": None, "max": 30}}
    assert put.status == 200
    replaced = await put.json()
    assert (replaced["type"], replaced["model"], replaced["unit"]) == ("t2", None, None)
    assert (replaced["location_id"], replaced["thresholds"]) == (None, {})
    assert list((await error_of(put_without_type, 422, "bad_request"))["details"]) == ["type"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "type"),
        ({"type": ""}, "type"),
        ({"type": 3}, "type"),
        ({"type": "a", "tipo": "b"}, "tipo"),
        ({"type": "t", "location_id": "abc"}, "location_id"),
        ({"type": "t", "location_id": 1.5}, "location_id"),
        ({"type": "t", "location_id": 999}, "location_id"),
        ({"type": "t", "thresholds": {"temp": {"min": 5, "max": 1}}}, "thresholds"),
        ({"type": "t", "thresholds": {"temp": {}}}, "thresholds"),
        ({"type": "t", "thresholds": {"temp": {"min": "1"}}}, "thresholds"),
        ({"type": "t", "thresholds": {"temp": {"min": 1, "avg": 2}}}, "thresholds"),
        ({"type": "t", "thresholds": {"temp": 5}}, "thresholds"),
        ({"type": "t", "thresholds": []}, "thresholds"),
        ({"type": "t", "metadata": "x"}, "metadata"),
        ({"type": "t", "serial": "x"}, "serial"),
    ],
)
async def test_invalid_sensor_is_422_naming_the_field(
    client: TestClient, token: Mint, body: dict[str, Any], field: str
):
    resp = await rest(client, "POST", "/api/v1/sensors", token(), json=body)

    error = await error_of(resp, 422, "bad_request")
    assert list(error["details"]) == [field]
    assert (await (await rest(client, "GET", "/api/v1/sensors")).json())["items"] == []


async def test_threshold_bounds_that_are_not_finite_are_rejected(client: TestClient, token: Mint):
    raw = b'{"type": "t", "thresholds": {"temp": {"max": Infinity}}}'

    resp = await rest(client, "POST", "/api/v1/sensors", token(), data=raw)

    await error_of(resp, 400, "invalid_json")


async def test_patch_to_unknown_location_is_422_and_leaves_the_sensor(
    client: TestClient, connect: Connect, token: Mint
):
    sensor = await make_sensor(client, token())
    ws = await connect(params={"token": token()})

    resp = await rest(
        client, "PATCH", f"/api/v1/sensors/{sensor['id']}", token(), json={"location_id": 77}
    )
    reply = await ws.request({"type": "request", "id": 5, "resource": "sensors", "action": "update",
                              "payload": {"id": sensor["id"], "location_id": 77}})  # fmt: skip

    assert list((await error_of(resp, 422, "bad_request"))["details"]) == ["location_id"]
    assert (reply["type"], reply["code"], list(reply["details"])) == (
        "error",
        "bad_request",
        ["location_id"],
    )
    assert await (await rest(client, "GET", f"/api/v1/sensors/{sensor['id']}")).json() == sensor


async def test_list_filters_by_location_and_type_and_pages(
    client: TestClient, connect: Connect, token: Mint
):
    tok = token()
    place = await make_location(client, tok)
    for n in range(6):
        await make_sensor(
            client, tok, type="t" if n % 2 else "h", location_id=place["id"] if n < 3 else None
        )
    ws = await connect()

    at_place = await (
        await rest(client, "GET", f"/api/v1/sensors?location_id={place['id']}")
    ).json()
    typed = await (await rest(client, "GET", "/api/v1/sensors?type=t&limit=2")).json()
    typed_next = await (
        await rest(
            client,
            "GET",
            "/api/v1/sensors",
            params={"type": "t", "limit": "2", "cursor": typed["next_cursor"]},
        )
    ).json()
    bad = await rest(client, "GET", "/api/v1/sensors?location_id=x")

    assert [s["location_id"] for s in at_place["items"]] == [place["id"]] * 3
    assert await ws_call(ws, "sensors", "list", {"location_id": place["id"]}) == at_place
    assert [s["type"] for s in typed["items"] + typed_next["items"]] == ["t"] * 3
    assert typed_next["next_cursor"] is None
    assert list((await error_of(bad, 422, "bad_request"))["details"]) == ["location_id"]


async def test_deleting_a_location_leaves_its_sensors_unlinked(client: TestClient, token: Mint):
    place = await make_location(client, token())
    sensor = await make_sensor(client, token(), location_id=place["id"])

    assert (await rest(client, "DELETE", f"/api/v1/locations/{place['id']}", token())).status == 204

    after = await (await rest(client, "GET", f"/api/v1/sensors/{sensor['id']}")).json()
    assert after["location_id"] is None


async def test_writes_need_a_service_or_admin_token(client: TestClient, token: Mint):
    body = {"type": "t"}

    await error_of(await rest(client, "POST", "/api/v1/sensors", json=body), 401, "unauthorized")
    await error_of(
        await rest(client, "POST", "/api/v1/sensors", token("user"), json=body), 403, "forbidden"
    )
    await error_of(
        await rest(client, "POST", "/api/v1/sensors", token("device"), json=body), 403, "forbidden"
    )
    assert (
        await rest(client, "POST", "/api/v1/sensors", token("service"), json=body)
    ).status == 201
    await error_of(
        await rest(client, "DELETE", "/api/v1/sensors/1", token("user")), 403, "forbidden"
    )


async def test_sensor_channels_hear_created_updated_deleted_with_exact_fields(
    client: TestClient, connect: Connect, token: Mint
):
    # A fresh database: the first sensor is 1, and subscribing never checks existence.
    own = await connect(params={"channel": "sensors:1"})
    every = await connect(params={"channel": "sensors"})
    tok = token("service", "gateway-7")

    body = {"tipo": "temperatura", "modelo": "DHT22"}
    created = await (await rest(client, "POST", "/api/v1/sensors", tok, json=body)).json()
    updated = await (
        await rest(client, "PATCH", "/api/v1/sensors/1", tok, json={"unit": "C"})
    ).json()
    assert (await rest(client, "DELETE", "/api/v1/sensors/1", tok)).status == 204

    assert created["id"] == 1
    expected = [("created", created), ("updated", updated), ("deleted", updated)]
    for ws, channel in ((own, "sensors:1"), (every, "sensors")):
        for event_type, data in expected:
            frame = await ws.recv_type("entity_event")
            assert frame["channel"] == channel
            # One publication on both channels: each socket gets it once, with both offsets.
            assert set(frame["offsets"]) == {"sensors", "sensors:1"}
            assert {k: frame[k] for k in EVENT_KEYS} == {
                "entity_type": "sensor",
                "event_type": event_type,
                "entity_id": 1,
                "data": data,
                "metadata": {"action": f"{event_type[:-1]}_sensor", "user": "gateway-7"},
            }
            assert (frame["data"]["tipo"], frame["data"]["modelo"]) == ("temperatura", "DHT22")
        await ws.nothing()
