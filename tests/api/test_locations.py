"""Locations over REST and WebSocket `request`, on SQLite and PostgreSQL.

`config` is overridden here (and imported by test_sensors.py) so the shared `client`,
`connect` and `token` fixtures serve an app on this test's own database: the storage tests'
SQLite file or PostgreSQL schema (`open_db`, parametrized by `backend`). It is autouse so
the database is set up before the app and dropped only after the app has closed.
"""

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.auth import Principal
from server.config import Config
from server.keys import SERVICES
from tests.api.test_system import ISO_UTC, Mint, error_of
from tests.conftest import Connect, auth_header, make_config

# Fixtures: every test here runs on SQLite and on PostgreSQL (skipped loudly when down).
from tests.storage.conftest import Opener, backend, open_db, pg_server_url  # noqa: F401

LOCATION_KEYS = {
    "id", "name", "description", "latitude", "longitude", "metadata", "created_at", "updated_at"
}  # fmt: skip


@pytest.fixture(autouse=True)
def config(open_db: Opener, tmp_path: Path) -> Config:  # noqa: F811
    return make_config(tmp_path, {"database": {"url": open_db.url}})


async def rest(
    client: TestClient, method: str, path: str, tok: str | None = None, **kw: Any
) -> Any:
    headers = auth_header(tok) if tok else {}
    return await client.request(method, path, headers=headers, **kw)


async def ws_call(ws: Any, resource: str, action: str, payload: dict[str, Any]) -> Any:
    """A `request` frame; returns the `response` data (asserting it is no error)."""
    reply = await ws.request(
        {"type": "request", "id": 1, "resource": resource, "action": action, "payload": payload}
    )
    assert reply["type"] == "response", reply
    assert reply["id"] == 1
    return reply["data"]


async def test_create_is_201_with_object_and_location_and_get_matches_over_ws(
    client: TestClient, connect: Connect, token: Mint
):
    body = {"name": "Lab", "description": "2nd floor", "latitude": 40.4, "longitude": -3.7}

    resp = await rest(
        client, "POST", "/api/v1/locations", token(), json={**body, "metadata": {"k": 1}}
    )
    created = await resp.json()

    assert resp.status == 201
    assert set(created) == LOCATION_KEYS
    assert resp.headers["Location"] == f"/api/v1/locations/{created['id']}"
    assert {k: created[k] for k in body} == body
    assert created["metadata"] == {"k": 1}
    assert ISO_UTC.match(created["created_at"])
    assert created["updated_at"] == created["created_at"]
    got = await rest(client, "GET", resp.headers["Location"])
    assert await got.json() == created
    assert await ws_call(await connect(), "locations", "get", {"id": created["id"]}) == created


async def test_create_over_ws_with_service_token_equals_rest_get(
    client: TestClient, connect: Connect, token: Mint
):
    ws = await connect(params={"token": token("service")})

    created = await ws_call(ws, "locations", "create", {"name": "Roof"})

    assert created["name"] == "Roof"
    assert (created["description"], created["latitude"], created["metadata"]) == (None, None, {})
    assert await (await rest(client, "GET", f"/api/v1/locations/{created['id']}")).json() == created


async def test_list_pages_120_rows_by_50_over_rest_and_ws(client: TestClient, connect: Connect):
    service = client.app[SERVICES].sensors
    for n in range(120):
        await service.create_location({"name": f"l{n}"}, by=Principal("seed", "admin"))
    ws = await connect()

    pages, cursor = [], None
    while True:
        query = {"cursor": cursor} if cursor else {}
        page = await (await rest(client, "GET", "/api/v1/locations", params=query)).json()
        assert await ws_call(ws, "locations", "list", query) == page
        pages.append(page)
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert [len(p["items"]) for p in pages] == [50, 50, 20]
    names = [item["name"] for p in pages for item in p["items"]]
    assert names == [f"l{n}" for n in range(120)]
    small = await (await rest(client, "GET", "/api/v1/locations?limit=1000")).json()
    assert (len(small["items"]), small["next_cursor"]) == (120, None)


@pytest.mark.parametrize(
    ("query", "field"),
    [("limit=abc", "limit"), ("limit=0", "limit"), ("limit=1001", "limit"),
     ("cursor=garbage", "cursor"), ("nope=1", "nope")],
)  # fmt: skip
async def test_bad_list_query_is_422_naming_the_field(client: TestClient, query: str, field: str):
    error = await error_of(
        await rest(client, "GET", f"/api/v1/locations?{query}"), 422, "bad_request"
    )

    assert list(error["details"]) == [field]
    assert isinstance(error["details"][field], list)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": 5}, "name"),
        ({"name": "x", "latitude": 90.5}, "latitude"),
        ({"name": "x", "longitude": -180.01}, "longitude"),
        ({"name": "x", "latitude": "12"}, "latitude"),
        ({"name": "x", "latitude": True}, "latitude"),
        ({"name": "x", "metadata": [1]}, "metadata"),
        ({"name": "x", "color": "red"}, "color"),
    ],
)
async def test_invalid_location_is_422_naming_the_field(
    client: TestClient, token: Mint, body: dict[str, Any], field: str
):
    resp = await rest(client, "POST", "/api/v1/locations", token(), json=body)

    error = await error_of(resp, 422, "bad_request")
    assert list(error["details"]) == [field]


@pytest.mark.parametrize("raw", [b"{not json", b'{"name": "x", "latitude": NaN}',
                                 b'{"name": "x", "latitude": Infinity}', b'{"name": "x", "latitude": 1e999}'])  # fmt: skip
async def test_non_json_and_non_finite_numbers_are_400_invalid_json(
    client: TestClient, token: Mint, raw: bytes
):
    resp = await rest(client, "POST", "/api/v1/locations", token(), data=raw)

    await error_of(resp, 400, "invalid_json")


async def test_non_finite_number_over_ws_is_invalid_json_and_the_socket_stays(
    connect: Connect, token: Mint
):
    ws = await connect(params={"token": token()})
    await ws.send(
        '{"type":"request","id":2,"resource":"locations","action":"create","payload":{"name":"x","latitude":NaN}}'
    )

    assert (await ws.recv_type("error"))["code"] == "invalid_json"
    assert (await ws_call(ws, "locations", "create", {"name": "x"}))["name"] == "x"


async def test_put_replaces_whole_and_patch_changes_only_given_fields(
    client: TestClient, connect: Connect, token: Mint
):
    tok = token()
    created = await (await rest(client, "POST", "/api/v1/locations", tok,
                                json={"name": "a", "latitude": 1.0, "metadata": {"m": 1}})).json()  # fmt: skip
    path = f"/api/v1/locations/{created['id']}"

    patched = await rest(client, "PATCH", path, tok, json={"description": "d"})
    over_ws = await ws_call(await connect(params={"token": tok}), "locations", "update",
                            {"id": created["id"], "longitude": 2.0})  # fmt: skip
    put = await rest(client, "PUT", path, tok, json={"name": "b"})
    put_without_name = await rest(client, "PUT", path, tok, json={"latitude": 3.0})

    assert patched.status == 200
    p = await patched.json()
    assert (p["name"], p["description"], p["latitude"], p["metadata"]) == ("a", "d", 1.0, {"m": 1})
    assert (over_ws["description"], over_ws["longitude"], over_ws["latitude"]) == ("d", 2.0, 1.0)
    assert put.status == 200
    replaced = await put.json()
    assert replaced["name"] == "b"
    assert (replaced["description"], replaced["latitude"], replaced["longitude"]) == (
        None,
        None,
        None,
    )
    assert (replaced["metadata"], replaced["created_at"]) == ({}, created["created_at"])
    assert list((await error_of(put_without_name, 422, "bad_request"))["details"]) == ["name"]
    assert await (await rest(client, "GET", path)).json() == replaced


async def test_patch_may_not_null_the_name(client: TestClient, token: Mint):
    created = await (
        await rest(client, "POST", "/api/v1/locations", token(), json={"name": "a"})
    ).json()

    resp = await rest(
        client, "PATCH", f"/api/v1/locations/{created['id']}", token(), json={"name": None}
    )

    assert list((await error_of(resp, 422, "bad_request"))["details"]) == ["name"]


async def test_delete_is_204_then_get_and_second_delete_are_404(client: TestClient, token: Mint):
    created = await (
        await rest(client, "POST", "/api/v1/locations", token(), json={"name": "a"})
    ).json()
    path = f"/api/v1/locations/{created['id']}"

    resp = await rest(client, "DELETE", path, token())

    assert resp.status == 204
    await error_of(await rest(client, "GET", path), 404, "not_found")
    await error_of(await rest(client, "DELETE", path, token()), 404, "not_found")


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
async def test_unknown_id_is_404_and_non_integer_id_is_422(
    client: TestClient, token: Mint, method: str
):
    body = {"json": {"name": "a"}} if method in ("PUT", "PATCH") else {}

    missing = await rest(client, method, "/api/v1/locations/999", token(), **body)
    for bad in ("abc", "1.5", "0", str(2**63)):
        error = await error_of(
            await rest(client, method, f"/api/v1/locations/{bad}", token(), **body),
            422,
            "bad_request",
        )
        assert list(error["details"]) == ["id"]

    await error_of(missing, 404, "not_found")


async def test_ws_get_unknown_id_is_not_found_error_frame(connect: Connect):
    ws = await connect()

    reply = await ws.request(
        {
            "type": "request",
            "id": "g",
            "resource": "locations",
            "action": "get",
            "payload": {"id": 42},
        }
    )

    assert (reply["type"], reply["id"], reply["code"]) == ("error", "g", "not_found")


async def test_writes_need_a_service_or_admin_token(
    client: TestClient, connect: Connect, token: Mint
):
    anonymous = await rest(client, "POST", "/api/v1/locations", json={"name": "a"})
    user = await rest(client, "POST", "/api/v1/locations", token("user"), json={"name": "a"})
    service = await rest(client, "POST", "/api/v1/locations", token("service"), json={"name": "a"})
    ws_user = await connect(params={"token": token("user")})
    reply = await ws_user.request(
        {
            "type": "request",
            "id": 3,
            "resource": "locations",
            "action": "create",
            "payload": {"name": "a"},
        }
    )

    await error_of(anonymous, 401, "unauthorized")
    await error_of(user, 403, "forbidden")
    assert service.status == 201
    assert (reply["type"], reply["code"]) == ("error", "forbidden")
    listed = await (await rest(client, "GET", "/api/v1/locations")).json()
    assert len(listed["items"]) == 1


async def test_locations_channel_hears_created_updated_deleted(
    client: TestClient, connect: Connect, token: Mint
):
    ws = await connect(params={"channel": "locations"})
    tok = token("admin", "ops")

    created = await (
        await rest(client, "POST", "/api/v1/locations", tok, json={"name": "a"})
    ).json()
    updated = await (
        await rest(client, "PATCH", f"/api/v1/locations/{created['id']}", tok, json={"name": "b"})
    ).json()
    await rest(client, "DELETE", f"/api/v1/locations/{created['id']}", tok)

    for event_type, data in (("created", created), ("updated", updated), ("deleted", updated)):
        frame = await ws.recv_type("entity_event")
        assert frame["channel"] == "locations"
        assert {
            k: frame[k] for k in ("entity_type", "event_type", "entity_id", "data", "metadata")
        } == {
            "entity_type": "location",
            "event_type": event_type,
            "entity_id": created["id"],
            "data": data,
            "metadata": {"action": f"{event_type[:-1]}_location", "user": "ops"},
        }
    await ws.nothing()
