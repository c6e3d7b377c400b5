"""The README tour's steps as a newcomer types them: separate reading posts make a
forecastable series, and the recovery frame goes to a socket not already on `general`."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import auth_header, open_ws

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


async def test_tour_forecast_after_the_readings_it_posts(client, token):
    tok = auth_header(token("service"))
    sensor = await client.post(
        "/api/v1/sensors",
        json={"tipo": "temperatura", "modelo": "DHT22", "unit": "C",
              "thresholds": {"temperatura": {"max": 30}}},
        headers=tok,
    )  # fmt: skip
    sid = (await sensor.json())["id"]
    first = await client.post(
        "/api/v1/readings", json={"sensor_id": sid, "temperatura": 31.5}, headers=tok
    )
    assert first.status == 201
    loop = re.search(r"for t in ([\d. ]+); do", README)
    assert loop, "the tour posts its readings in a loop"
    for t in loop.group(1).split():
        resp = await client.post(
            "/api/v1/readings", json={"sensor_id": sid, "temperatura": float(t)}, headers=tok
        )
        assert resp.status == 201
    resp = await client.post(
        f"/api/v1/sensors/{sid}/predictions",
        json={"metric": "temperatura", "horizon": 5},
        headers=tok,
    )
    assert resp.status == 201, await resp.text()


async def test_tour_recovery_frame_recovers_on_a_socket_not_in_general(client, token):
    assert "/api/v1/ws?channel=sensors'" in README
    tok = auth_header(token("service"))
    receipts = []
    for i in range(3):
        resp = await client.post("/api/v1/events/general", json={"n": i}, headers=tok)
        receipts.append(await resp.json())
    ws = await open_ws(client, "/api/v1/ws?channel=sensors")
    epoch = receipts[0]["epoch"]
    reply = await ws.request(
        {"type": "subscribe", "id": 4, "channel": "general", "since": {"offset": 0, "epoch": epoch}}
    )
    assert reply["type"] == "subscribed", reply
    assert (reply["recovered"], reply["offset"]) == (True, 3)
    assert [(await ws.recv_type("event"))["offset"] for _ in range(3)] == [1, 2, 3]


def test_readme_stands_alone_with_the_protocol_in_the_repository():
    root = Path(__file__).resolve().parents[2]
    assert "../shared" not in README
    for link in re.findall(r"\]\(([^)#:]+)\)", README):
        assert (root / link).exists(), link
    protocol = (root / "docs/protocol.md").read_text()
    assert "](docs/protocol.md)" in README
    for heading in ("## 1. Channels", "## 2. WebSocket", "## 3. REST"):
        assert heading in protocol
