"""Predictions over REST and WebSocket `request`, on SQLite and PostgreSQL, and their event."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.keys import SERVICES
from tests.api.test_readings import add_sensor, config, ws_call  # noqa: F401
from tests.api.test_system import ISO_UTC, Mint, error_of
from tests.conftest import Connect, auth_header

# Fixtures: every test here runs on SQLite and on PostgreSQL (skipped loudly when down).
from tests.storage.conftest import backend, open_db, pg_server_url  # noqa: F401

T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)


async def add_line(client: TestClient, sid: int, count: int, metric: str = "t") -> None:
    """value = 2*i + 5 at 60 s spacing from T0."""
    rows = [(sid, T0 + timedelta(seconds=60 * i), {metric: 2.0 * i + 5}) for i in range(count)]
    await client.app[SERVICES].storage.copy_rows("readings", ("sensor_id", "ts", "metrics"), rows)


async def predict(client: TestClient, sid: int, body: Any, tok: str | None) -> Any:
    headers = auth_header(tok) if tok else {}
    return await client.post(f"/api/v1/sensors/{sid}/predictions", json=body, headers=headers)


async def test_predict_continues_a_linear_series_and_stores_it(client, token: Mint):
    sid = await add_sensor(client)
    await add_line(client, sid, 50)

    resp = await predict(client, sid, {"metric": "t", "horizon": 3}, token())

    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert set(body) == {
        "id", "sensor_id", "metric", "horizon", "method", "points", "params", "created_at"
    }  # fmt: skip
    assert (body["sensor_id"], body["metric"], body["horizon"], body["method"]) == (
        sid, "t", 3, "holt"
    )  # fmt: skip
    assert ISO_UTC.match(body["created_at"])
    assert [p["timestamp"] for p in body["points"]] == [
        "2024-05-01T12:50:00.000Z",
        "2024-05-01T12:51:00.000Z",
        "2024-05-01T12:52:00.000Z",
    ]
    for step, point in enumerate(body["points"], start=1):
        assert abs(point["value"] - (2 * (49 + step) + 5)) < 1e-6
    params = body["params"]
    assert set(params) == {"alpha", "beta", "rmse", "interval_seconds", "n"}
    assert 0 < params["alpha"] < 1
    assert 0 < params["beta"] < 1
    assert (params["interval_seconds"], params["n"]) == (60.0, 50)
    assert params["rmse"] < 1e-6
    listed = await (await client.get(f"/api/v1/predictions?sensor_id={sid}")).json()
    assert listed == {"items": [body], "next_cursor": None}


async def test_too_few_readings_is_422_with_a_clear_message(client, token: Mint):
    sid = await add_sensor(client)
    await add_line(client, sid, 2)

    error = await error_of(
        await predict(client, sid, {"metric": "t", "horizon": 5}, token()), 422, "bad_request"
    )

    assert error["message"] == "need at least 3 readings of metric t, have 2"
    assert error["details"] == {"metric": [error["message"]]}
    other = await predict(client, sid, {"metric": "hum", "horizon": 5}, token())
    assert (await error_of(other, 422, "bad_request"))["message"].endswith("metric hum, have 0")


async def test_readings_all_at_one_instant_are_422(client, token: Mint):
    sid = await add_sensor(client)
    rows = [(sid, T0, {"t": float(i)}) for i in range(4)]
    await client.app[SERVICES].storage.copy_rows("readings", ("sensor_id", "ts", "metrics"), rows)

    error = await error_of(
        await predict(client, sid, {"metric": "t", "horizon": 5}, token()), 422, "bad_request"
    )

    assert "same timestamp" in error["message"]


async def test_bad_horizon_or_metric_is_422_naming_the_field(client, token: Mint):
    sid = await add_sensor(client)
    await add_line(client, sid, 5)
    cases = [
        ({"metric": "t", "horizon": 0}, "horizon"),
        ({"metric": "t", "horizon": 1001}, "horizon"),
        ({"metric": "t", "horizon": "soon"}, "horizon"),
        ({"metric": "t"}, "horizon"),
        ({"horizon": 3}, "metric"),
        ({"metric": "", "horizon": 3}, "metric"),
    ]
    for body, field in cases:
        error = await error_of(await predict(client, sid, body, token()), 422, "bad_request")
        assert list(error["details"]) == [field], body
    assert await client.app[SERVICES].storage.fetch("SELECT id FROM predictions") == []


async def test_unknown_sensor_is_404(client, token: Mint):
    sid = await add_sensor(client)

    await error_of(
        await predict(client, sid + 99, {"metric": "t", "horizon": 1}, token()), 404, "not_found"
    )


async def test_predict_needs_service_or_admin(client, token: Mint):
    sid = await add_sensor(client)
    await add_line(client, sid, 5)
    body = {"metric": "t", "horizon": 1}

    await error_of(await predict(client, sid, body, None), 401, "unauthorized")
    await error_of(await predict(client, sid, body, token("user")), 403, "forbidden")
    await error_of(await predict(client, sid, body, token("device")), 403, "forbidden")
    assert (await predict(client, sid, body, token("admin"))).status == 201


async def test_sensor_subscriber_gets_prediction_completed_over_ws_request(
    client, connect: Connect, token: Mint
):
    sid = await add_sensor(client)
    await add_line(client, sid, 10)
    on_sensor = await connect(f"/api/v1/ws?channel=sensors:{sid}")
    everything = await connect("/api/v1/ws?channel=predictions")
    other = await connect(f"/api/v1/ws?channel=sensors:{sid + 1}")
    caller = await connect(params={"token": token()})

    reply = await ws_call(
        caller, "predictions", "predict", {"sensor_id": sid, "metric": "t", "horizon": 2}
    )

    assert reply["type"] == "response", reply
    prediction = reply["data"]
    assert [p["value"] for p in prediction["points"]] == [
        pytest.approx(2 * 10 + 5, abs=1e-6),
        pytest.approx(2 * 11 + 5, abs=1e-6),
    ]
    for ws, channel in ((on_sensor, f"sensors:{sid}"), (everything, "predictions")):
        frame = await ws.recv_type("entity_event")
        assert frame["channel"] == channel
        assert {k: frame[k] for k in ("entity_type", "event_type", "entity_id", "data",
                                      "metadata")} == {
            "entity_type": "prediction", "event_type": "prediction_completed",
            "entity_id": prediction["id"], "data": prediction,
            "metadata": {"action": "prediction_completed"},
        }  # fmt: skip
    await other.nothing()
    denied = await ws_call(
        await connect(), "predictions", "predict", {"sensor_id": sid, "metric": "t", "horizon": 2}
    )
    assert (denied["type"], denied["code"]) == ("error", "unauthorized")


async def test_list_pages_newest_first_over_rest_and_ws(client, connect: Connect, token: Mint):
    a, b = await add_sensor(client), await add_sensor(client)
    await add_line(client, a, 5)
    await add_line(client, b, 5)
    ids = []
    for sid in (a, b, a, a):
        resp = await predict(client, sid, {"metric": "t", "horizon": 1}, token())
        ids.append((await resp.json())["id"])

    seen: list[int] = []
    cursor = None
    while True:
        params = {"sensor_id": a, "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = await (await client.get("/api/v1/predictions", params=params)).json()
        seen += [item["id"] for item in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            break

    assert seen == [ids[3], ids[2], ids[0]]
    reply = await ws_call(await connect(), "predictions", "list", {"limit": 10})
    assert [item["id"] for item in reply["data"]["items"]] == ids[::-1]
    bad = await client.get("/api/v1/predictions", params={"cursor": "nope"})
    assert (await error_of(bad, 422, "bad_request"))["details"] == {
        "cursor": ["Not a cursor this server returned."]
    }
