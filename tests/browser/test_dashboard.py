"""The dashboard in a real browser against a real server on the shipped config."""

from __future__ import annotations

import re
from typing import Any

from tests.browser.conftest import DashboardServer, Page

CONNECTED = "#status[data-status=connected]"


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as pw_expect

    return pw_expect(locator)


def make_sensor(
    server: DashboardServer, name: str, token: str | None = None, **fields: Any
) -> dict[str, Any]:
    body = {"name": name, "type": "temperature", "unit": "°C", **fields}
    sensor: dict[str, Any] = server.call("POST", "/api/v1/sensors", body, token or server.token())
    return sensor


def sensor_row(p: Page, sensor: dict[str, Any]) -> Any:
    return p.page.locator(f'#sensors tr[data-sensor-id="{sensor["id"]}"]')


def post_reading(server: DashboardServer, sensor_id: int, **values: float) -> None:
    body = {"sensor_id": sensor_id, "values": values}
    server.call("POST", "/api/v1/readings", body, server.token())


def test_page_loads_without_errors_or_requests_off_the_machine(
    open_page: Any, server: DashboardServer
) -> None:
    p: Page = open_page()
    expect(p.page.locator(CONNECTED)).to_be_visible()
    expect(p.page.locator("#identity")).to_contain_text("anonymous")
    # The chart library is the vendored one, served here.
    assert any(u.endswith("/static/vendor/uplot/uPlot.esm.js") for u in p.requests)
    assert any(u.startswith("ws://127.0.0.1:") for u in p.requests), p.requests
    assert p.off_machine() == []
    assert p.errors == []


def test_a_reading_posted_over_rest_shows_in_the_table_and_on_the_chart(
    open_page: Any, server: DashboardServer
) -> None:
    p: Page = open_page()
    expect(p.page.locator(CONNECTED)).to_be_visible()
    # Created after the page loaded: it arrives over the `sensors` channel.
    sensor = make_sensor(server, "Cold store")
    row = sensor_row(p, sensor)
    expect(row).to_contain_text("Cold store")
    row.click()
    expect(p.page.locator("#chart-title")).to_have_text("Cold store")
    post_reading(server, sensor["id"], temperature=-18.25)
    expect(row.locator("td.value")).to_have_text("-18.25°C")
    expect(row.locator(".fresh")).to_have_attribute("data-fresh", "live")
    chart = p.page.locator("#chart")
    expect(chart).to_have_attribute("data-last", "-18.25")
    post_reading(server, sensor["id"], temperature=-17.5)
    expect(chart).to_have_attribute("data-points", "2")
    expect(chart).to_have_attribute("data-last", "-17.5")
    expect(p.page.locator("#chart canvas")).to_be_visible()
    assert p.errors == []


def test_an_anomaly_appears_in_the_feed_and_is_resolved_with_a_token(
    open_page: Any, server: DashboardServer
) -> None:
    sensor = make_sensor(server, "Boiler", thresholds={"temperature": {"max": 70}})
    p: Page = open_page()
    expect(p.page.locator(CONNECTED)).to_be_visible()
    post_reading(server, sensor["id"], temperature=91.5)
    item = p.page.locator("#anomalies li", has_text="Boiler: temperature 91.5")
    expect(item).to_be_visible()
    expect(item).to_contain_text("above 70")
    # Anonymous on the shipped config: resolving asks for a token, then goes through.
    item.get_by_role("button", name="Resolve").click()
    dialog = p.page.locator("#token-dialog")
    expect(dialog).to_be_visible()
    p.page.fill("#token-input", server.token())
    p.page.click("#token-save")
    expect(item).to_have_class(re.compile(r"\bresolved\b"))
    anomaly_id = int(item.get_attribute("data-anomaly-id") or 0)
    stored = server.call("GET", f"/api/v1/anomalies?sensor_id={sensor['id']}")["items"]
    assert [(a["id"], a["resolved"]) for a in stored] == [(anomaly_id, True)]
    # Chromium logs the 401 that told the page a token was needed; nothing else failed.
    assert [e for e in p.errors if "status of 401" not in e] == []
    assert len(p.errors) == 1


def test_two_pages_chat_and_see_presence_and_typing(open_page: Any) -> None:
    alice: Page = open_page("?username=alice&user_id=alice&room=ops")
    expect(alice.page.locator(CONNECTED)).to_be_visible()
    bob: Page = open_page("?username=bob&user_id=bob&room=ops")
    expect(alice.page.locator('#presence [data-user-id="bob"]')).to_have_text("bob")
    expect(bob.page.locator('#presence [data-user-id="alice"]')).to_have_text("alice")
    bob.page.locator("#chat-input").press_sequentially("hel")
    expect(alice.page.locator("#typing")).to_have_text("bob is typing…")
    bob.page.fill("#chat-input", "hello alice")
    bob.page.click("#chat-form button")
    expect(alice.page.locator("#messages li", has_text="hello alice")).to_contain_text("bob")
    expect(bob.page.locator("#messages li", has_text="hello alice")).to_be_visible()
    expect(alice.page.locator("#typing")).to_have_text("")
    # History: a page opened later gets the room's recent messages.
    carol: Page = open_page("?username=carol&user_id=carol&room=ops")
    expect(carol.page.locator("#messages li", has_text="hello alice")).to_be_visible()
    bob.context.close()
    expect(alice.page.locator('#presence [data-user-id="bob"]')).to_have_count(0)
    assert alice.errors == []
    assert carol.errors == []


def test_with_a_token_the_page_gets_its_own_notifications(
    open_page: Any, server: DashboardServer
) -> None:
    p: Page = open_page(f"?token={server.token('user', 'dana')}")
    expect(p.page.locator(CONNECTED)).to_be_visible()
    expect(p.page.locator("#identity")).to_have_text("dana · user")
    body = {"event": "user.mention", "payload": {"user_id": "dana", "by": "ops"}}
    note = server.call("POST", "/api/v1/notify", body, server.token())
    assert note["channel"] == "user:dana"
    item = p.page.locator("#notifications li", has_text="user.mention")
    expect(item).to_contain_text("user:dana")
    expect(p.page.locator("#notification-count")).to_have_text("1")
    assert p.errors == []


def test_a_hundred_sensors_take_a_batch_of_readings_at_once(
    open_page: Any, server: DashboardServer
) -> None:
    """The load the dashboard is built for: 100 sensors, readings for all of them at once
    (one subscription, one DOM pass per animation frame)."""
    token = server.token()
    ids = [make_sensor(server, f"Probe {i:03d}", token)["id"] for i in range(100)]
    p: Page = open_page()
    expect(p.page.locator(CONNECTED)).to_be_visible()
    listed = """(ids) => ids.every((id) => document.querySelector(
        `#sensors tr[data-sensor-id="${id}"] td.value`))"""
    p.page.wait_for_function(listed, arg=ids, timeout=30_000)
    for round_ in (1, 2):
        batch = [{"sensor_id": i, "values": {"temperature": round_ * 1000 + i}} for i in ids]
        assert server.call("POST", "/api/v1/readings", batch, token) == {"accepted": len(ids)}
    shown = """(ids) => ids.every((id) => document.querySelector(
        `#sensors tr[data-sensor-id="${id}"] td.value`)?.textContent === `${2000 + id}°C`)"""
    p.page.wait_for_function(shown, arg=ids, timeout=30_000)
    assert p.errors == []


def test_the_browser_client_backs_off_with_bounded_full_jitter(open_page: Any) -> None:
    p: Page = open_page()
    delays = p.page.evaluate(
        """async () => {
            const { backoffDelay } = await import("/static/sensorcast.js");
            const top = [...Array(9).keys()].map((n) => backoffDelay(n, {}, () => 1));
            return { top, none: backoffDelay(3, {}, () => 0), far: backoffDelay(5000, {}, () => 1) };
        }"""
    )
    assert delays == {"top": [0.5, 1, 2, 4, 8, 16, 30, 30, 30], "none": 0, "far": 30}


def test_the_page_recovers_after_the_server_restarts(
    open_page: Any, server: DashboardServer
) -> None:
    sensor = make_sensor(server, "Restart probe")
    p: Page = open_page()
    row = sensor_row(p, sensor)
    expect(row).to_be_visible()
    expect(p.page.locator(CONNECTED)).to_be_visible()
    server.stop()
    expect(p.page.locator("#status")).not_to_have_attribute("data-status", "connected")
    # Written while the page is cut off: only a state reload can show it.
    server.start()
    post_reading(server, sensor["id"], temperature=5.5)
    expect(p.page.locator(CONNECTED)).to_be_visible(timeout=30_000)
    expect(row.locator("td.value")).to_have_text("5.5°C")
    post_reading(server, sensor["id"], temperature=6.25)
    expect(row.locator("td.value")).to_have_text("6.25°C")
    # The browser logs the refused reconnects itself; our code logged nothing else.
    assert [e for e in p.errors if "WebSocket" not in e and "ERR_CONNECTION" not in e] == []
