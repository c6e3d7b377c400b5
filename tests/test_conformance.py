"""Conformance with SPEC's conventions (issue 15 §3): config spellings, publish bodies,
frames without a type, seed 001's notify_event and seed 004's action names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.config import ConfigError, load_config
from server.keys import AUTH
from tests.api.test_system import error_of
from tests.conftest import auth_header, open_ws

SHIPPED = Path(__file__).resolve().parent.parent / "config.yaml"


@pytest.mark.parametrize("given", ["warning", "Warning", "WARNING"])
def test_logging_level_is_case_insensitive(given: str):
    config = load_config(SHIPPED, environ={"SENSORCAST_LOGGING_LEVEL": given})
    assert config.logging.level == "WARNING"


def test_unknown_logging_level_is_still_refused():
    with pytest.raises(ConfigError, match=r"^logging\.level: "):
        load_config(SHIPPED, environ={"SENSORCAST_LOGGING_LEVEL": "loud"})


def test_redis_section_is_a_config_section():
    env = {"SENSORCAST_REDIS_URL": "redis://10.0.0.5:6379/2", "SENSORCAST_REDIS_PRESENCE_TTL": "45"}
    config = load_config(SHIPPED, environ=env)
    assert (config.redis.url, config.redis.presence_ttl) == ("redis://10.0.0.5:6379/2", 45.0)
    assert load_config(SHIPPED, environ={}).redis.presence_ttl == 30.0


def test_api_token_names_may_not_take_the_anonymous_prefix(tmp_path: Path):
    path = tmp_path / "config.yaml"
    path.write_text('auth: {api_tokens: [{name: "anonymous:1", token: "x" , role: admin}]}')
    with pytest.raises(ConfigError, match=r"^auth\.api_tokens\.0\.name: "):
        load_config(path, environ={})


async def test_publish_with_an_empty_body_is_422(client: TestClient):
    headers = auth_header(client.app[AUTH].mint("svc", "service"))
    for data in (b"", b"{}", b"  "):
        resp = await client.post("/api/v1/events/general", data=data, headers=headers)
        error = await error_of(resp, 422, "bad_request")
        assert list(error["details"]) == ["event"]


async def test_a_frame_without_type_is_told_so_with_the_public_types(client: TestClient):
    ws = await open_ws(client)
    reply = await ws.request({"id": 3, "channel": "general"})

    assert (reply["code"], reply["id"]) == ("unknown_type", 3)
    assert 'needs a "type"' in reply["message"]
    types = reply["details"]["types"]
    assert {"subscribe", "request", "refresh", "message", "ping"} <= set(types)
    assert "seed001_request" not in types


async def test_seed001_notify_event_reaches_its_sockets_as_that_event(client: TestClient):
    tok = client.app[AUTH].mint("u1", "user")
    ws = await open_ws(client, "/ws", handshake=False, params={"token": tok})
    for _ in range(2):  # greeting events: connection, subscribed (general)
        await ws.recv_type("event")
    data = {"conversation_id": "c1", "content": "hola"}
    service = auth_header(client.app[AUTH].mint("backend", "service"))

    resp = await client.post(
        "/api/v1/events/general", json={"type": "new_message", "data": data}, headers=service
    )
    event = await ws.recv_type("event")

    assert resp.status == 202
    assert event["payload"] == {"type": "new_message", "data": data}
    assert event["id"] == f"evt-general-{(await resp.json())['offset']}"


async def test_seed004_action_names_are_mirrored(client: TestClient):
    ws = await open_ws(client, "/api/v1/ws?channel=sensors")
    headers = auth_header(client.app[AUTH].mint("svc", "service"))
    created: Any = await (
        await client.post(
            "/api/v1/sensors", json={"tipo": "temperatura", "modelo": "DHT22"}, headers=headers
        )
    ).json()
    await client.patch(f"/api/v1/sensors/{created['id']}", json={"unit": "C"}, headers=headers)
    await client.delete(f"/api/v1/sensors/{created['id']}", headers=headers)

    actions = [(await ws.recv_type("entity_event"))["metadata"]["action"] for _ in range(3)]
    assert actions == ["create_sensor", "update_sensor", "delete_sensor"]
