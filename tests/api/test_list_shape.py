"""SPEC §5: every list answers `{"items": [...], "next_cursor": ...}`. This walks the OpenAPI
document, calls every GET operation with data in place, and checks that each answer that
is a collection (a top-level array of objects, or an operation named `list`) has both."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from server.keys import AUTH
from tests.conftest import auth_header, open_ws

# What each path parameter names in the data the test makes first.
PATH_VALUES = {"channel": "general", "room": "lobby"}
QUERY_VALUES = {"metric": "t"}


async def make_data(client: TestClient, headers: dict[str, str]) -> dict[str, Any]:
    location = await (
        await client.post("/api/v1/locations", json={"name": "plant"}, headers=headers)
    ).json()
    sensor = await (
        await client.post(
            "/api/v1/sensors",
            json={
                "type": "temperature",
                "location_id": location["id"],
                "thresholds": {"t": {"max": 5}},
            },
            headers=headers,
        )
    ).json()
    readings = [{"sensor_id": sensor["id"], "values": {"t": 1.0 + i}} for i in range(8)]
    resp = await client.post("/api/v1/readings", json=readings, headers=headers)
    assert resp.status == 201, await resp.text()
    await client.post(
        f"/api/v1/sensors/{sensor['id']}/predictions",
        json={"metric": "t", "horizon": 2},
        headers=headers,
    )
    await client.post("/api/v1/broadcast/lobby", json={"content": "hi"}, headers=headers)
    await client.post("/api/v1/notify", json={"event": "news", "payload": {}}, headers=headers)
    return {"id": sensor["id"], "sensor_id": sensor["id"]}


def is_collection(body: Any) -> bool:
    return isinstance(body, dict) and any(
        isinstance(v, list) and any(isinstance(x, dict) for x in v) for v in body.values()
    )


async def test_every_list_operation_answers_items_and_next_cursor(client: TestClient):
    headers = auth_header(client.app[AUTH].mint("walker", "admin"))
    ids = await make_data(client, headers)
    # Someone in the room, so its connections are a non-empty list.
    await open_ws(client, "/ws/lobby?user_id=7")
    doc = await (await client.get("/api/v1/openapi.json")).json()

    checked = []
    for path, item in doc["paths"].items():
        op = item.get("get")
        # Routes that are not operations (health, docs, WebSocket upgrades, seed aliases in
        # their seed's own shapes) are in the document too, tagged system / websocket.
        if op is None or op.get("tags") in (["websocket"], ["system"]):
            continue
        url = path
        query = {}
        for param in op.get("parameters", []):
            name = param["name"]
            if param["in"] == "path":
                url = url.replace("{" + name + "}", str(PATH_VALUES.get(name, ids.get(name))))
            elif param.get("required"):
                query[name] = QUERY_VALUES[name]
        resp = await client.get(url, params=query, headers=headers)
        assert resp.status == 200, (path, await resp.text())
        body = await resp.json()
        if op["operationId"].endswith("_list") or is_collection(body):
            assert isinstance(body.get("items"), list), (path, body)
            assert "next_cursor" in body, (path, body)
            assert body["next_cursor"] is None or isinstance(body["next_cursor"], str)
            checked.append(path)

    # The walk saw the lists the issue names, and each has something in it.
    for path in (
        "/api/v1/rooms/{room}/connections",
        "/api/v1/sensors/{sensor_id}/readings/aggregate",
        "/api/v1/sensors",
        "/api/v1/messages/{room}",
    ):
        assert path in checked, checked
