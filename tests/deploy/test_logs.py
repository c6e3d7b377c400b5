"""logging.format: json on a real process: every stderr line is one JSON object with the
event's fields; X-Request-ID on responses, in their log lines and in error bodies; auth
failures name the address, never the token."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import aiohttp

from tests.deploy.process import running


async def test_json_lines_carry_events_request_ids_and_no_tokens(tmp_path: Path) -> None:
    bad_token = "not-a-real-token-but-secret-looking-0123456789"
    with running(tmp_path, {"logging": {"format": "json", "level": "info"}}) as server:
        server.wait_accepting()
        async with aiohttp.ClientSession() as session:
            async with session.get(
                f"{server.url}/api/v1/sensors/999", headers={"X-Request-ID": "trace-abc.1"}
            ) as resp:
                assert resp.status == 404
                assert resp.headers["X-Request-ID"] == "trace-abc.1"
                assert (await resp.json())["error"]["request_id"] == "trace-abc.1"
            async with session.get(f"{server.url}/nowhere") as resp:
                assert resp.status == 404
                made = resp.headers["X-Request-ID"]
                assert (await resp.json())["error"]["request_id"] == made
            async with session.get(
                f"{server.url}/api/v1/stats", headers={"Authorization": f"Bearer {bad_token}"}
            ) as resp:
                assert resp.status == 401
            async with session.ws_connect(f"{server.url}/api/v1/ws?token={bad_token}") as ws:
                msg = await ws.receive(timeout=30)
                assert msg.type is aiohttp.WSMsgType.CLOSE
                assert msg.data == 4001
            ws = await session.ws_connect(f"{server.url}/api/v1/ws")
            assert (await ws.receive_json(timeout=30))["type"] == "connection"
            server.proc.send_signal(signal.SIGTERM)
            while (msg := await ws.receive(timeout=30)).type is aiohttp.WSMsgType.TEXT:
                pass
            assert msg.data == 1001
            await ws.close()
        assert await asyncio.to_thread(server.proc.wait, 60) == 0

    text = server.stderr
    assert bad_token not in text
    lines = [json.loads(line) for line in text.splitlines()]  # every line is JSON
    for line in lines:
        assert {"ts", "level", "logger", "message"} <= set(line), line
        assert line["ts"].endswith("Z")
        assert len(line["ts"]) == len("2026-01-01T00:00:00.000Z")
    events: dict[str, list[dict]] = {}
    for line in lines:
        events.setdefault(line.get("event", ""), []).append(line)
    assert any(line["message"].startswith("listening on http://127.0.0.1:") for line in lines)
    assert not any("Running on" in line["message"] for line in lines)  # no aiohttp banner
    traced = [r for r in events["request"] if r["request_id"] == "trace-abc.1"]
    assert [(r["status"], r["path"], r["method"]) for r in traced] == [
        (404, "/api/v1/sensors/999", "GET")
    ]
    assert any(r["request_id"] == made and r["status"] == 404 for r in events["request"])
    failures = events["auth_failure"]
    assert len(failures) == 2
    assert {f["remote"] for f in failures} == {"127.0.0.1"}
    (connect,) = events["connect"]
    assert connect["channels"] == ["general"]
    assert connect["remote"] == "127.0.0.1"
    disconnects = {d["client_id"]: d for d in events["disconnect"]}
    ours = disconnects[connect["client_id"]]
    # The code the client got at shutdown, not the client's reply.
    assert (ours["code"], ours["closed_by"]) == (1001, "server")
    assert ours["duration_s"] >= 0
