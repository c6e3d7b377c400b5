"""Take docs/dashboard.png: `.venv/bin/python -m tests.browser.screenshot [PATH]`.

A real server on the shipped config in a temporary directory, ten sensors with fifteen
minutes of history, live readings, anomalies, a forecast, two people chatting and two
notifications; then Chromium (the Debian package, as in the browser tests) shoots it."""

from __future__ import annotations

import math
import random
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, DashboardServer

OUT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
# name, type, unit, typical value, swing, thresholds
SENSORS: list[tuple[str, str, str, float, float, dict[str, Any]]] = [
    ("Boiler room", "temperature", "°C", 63, 3.5, {"temperature": {"max": 70}}),
    ("Cold store A", "temperature", "°C", -18, 0.6, {"temperature": {"max": -15}}),
    ("Cold store B", "temperature", "°C", -17.5, 0.7, {"temperature": {"max": -15}}),
    ("Office 2F", "temperature", "°C", 21.5, 0.5, {}),
    ("Server rack 3", "temperature", "°C", 27, 1.2, {"temperature": {"max": 35}}),
    ("Greenhouse", "humidity", "%", 68, 4, {"humidity": {"min": 50, "max": 85}}),
    ("Warehouse door", "co2", "ppm", 620, 60, {"co2": {"max": 1200}}),
    ("Main feed", "power", "kW", 41, 5, {}),
    ("Water tank", "level", "%", 74, 1, {"level": {"min": 20}}),
    ("Roof station", "wind", "m/s", 6, 2, {}),
]


def boiler(i: int) -> float:
    """A swing, then a steady climb towards its 70 °C threshold."""
    if i < 68:
        return 63 + 2.6 * math.sin(i / 8)
    start = 63 + 2.6 * math.sin(67 / 8)
    return start + (i - 67) * (68.9 - start) / 22


def seed(server: DashboardServer, token: str) -> None:
    location = server.call("POST", "/api/v1/locations", {"name": "Plant 1"}, token)
    now = datetime.now(UTC)
    history = []
    for sid, (name, kind, unit, base, swing, thresholds) in enumerate(SENSORS, 1):
        body = {"name": name, "type": kind, "unit": unit, "model": "SC-200"}
        body |= {"location_id": location["id"], "thresholds": thresholds}
        assert server.call("POST", "/api/v1/sensors", body, token)["id"] == sid
        for i in range(90):
            noise = random.uniform(-swing, swing) * 0.15
            value = boiler(i) + noise / 4 if sid == 1 else base + swing * math.sin(i / 9 + sid)
            stamp = (now - timedelta(seconds=(90 - i) * 10)).isoformat()
            history.append(
                {"sensor_id": sid, "timestamp": stamp, "values": {kind: round(value, 2)}}
            )
    server.call("POST", "/api/v1/readings", history, token)
    server.call(
        "POST", "/api/v1/readings", {"sensor_id": 3, "values": {"temperature": -13.9}}, token
    )
    resolved = server.call("GET", "/api/v1/anomalies", token=token)["items"][0]
    server.call("POST", f"/api/v1/anomalies/{resolved['id']}/resolve", token=token)


def live(server: DashboardServer, token: str, step: int) -> None:
    batch = []
    for sid, (_, kind, _, base, swing, _) in enumerate(SENSORS, 1):
        value = 69.0 + 0.2 * step if sid == 1 else base + random.uniform(-0.2, 0.2) * swing
        batch.append({"sensor_id": sid, "values": {kind: round(value, 2)}})
    server.call("POST", "/api/v1/readings", batch, token)


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = DashboardServer(Path(tmp))
        server.start()
        try:
            token = server.token("admin", "ops")
            seed(server, token)
            shoot(server, token, out)
        finally:
            server.stop()
    print(out)


def shoot(server: DashboardServer, token: str, out: Path) -> None:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        view = {"width": 1600, "height": 900}
        page = browser.new_page(viewport=view)
        page.goto(f"{server.url}/?username=operator&user_id=operator")
        page.wait_for_selector("#status[data-status=connected]")
        maria = browser.new_page(viewport=view)
        maria.goto(f"{server.url}/?username=maria&user_id=maria")
        page.wait_for_selector('#presence [data-user-id="maria"]')
        say(maria, "Boiler room is climbing again, can someone check the mixing valve?")
        page.wait_for_selector("#messages li")
        say(page, "On it. The forecast says it crosses 70 °C in about two minutes.")
        maria.locator("#chat-input").press_sequentially("ok")
        for reading in (
            {"sensor_id": 7, "values": {"co2": 1284}},
            {"sensor_id": 5, "values": {"temperature": 36.4}},
            {"sensor_id": 6, "values": {"humidity": 88.1}},
        ):
            server.call("POST", "/api/v1/readings", reading, token)
        body = {
            "event": "maintenance.scheduled",
            "payload": {"site": "Plant 1", "window": "22:00-23:00"},
        }
        server.call("POST", "/api/v1/notify", body, token)
        server.call(
            "POST",
            "/api/v1/ws/test-event?channel=general&message=Deploy%20v0.1.0%20finished",
            token=token,
        )
        for step in range(4):
            live(server, token, step)
        forecast = {"metric": "temperature", "horizon": 24}
        server.call("POST", "/api/v1/sensors/1/predictions", forecast, token)
        page.wait_for_selector('#chart[data-forecast="24"]')
        page.wait_for_selector("#typing:has-text('maria is typing')")
        page.screenshot(path=str(out), animations="disabled")
        browser.close()


def say(page: Any, text: str) -> None:
    page.fill("#chat-input", text)
    page.click("#chat-form button")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
