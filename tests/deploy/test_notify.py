"""sd_notify from a real server process to a test $NOTIFY_SOCKET."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import aiohttp

from server.notify import Notifier
from tests.deploy.process import next_message, notify_socket, running


def test_notifier_without_socket_is_silent() -> None:
    n = Notifier.from_environ({})
    assert not n.enabled
    assert n.watchdog_interval is None
    assert n.send("READY=1") is False


def test_watchdog_for_another_pid_is_ignored() -> None:
    n = Notifier.from_environ(
        {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    )
    assert n.watchdog_interval is None
    n = Notifier.from_environ({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "2000000"})
    assert n.watchdog_interval == 1.0


def test_notifier_survives_a_vanished_socket(tmp_path: Path) -> None:
    assert Notifier(str(tmp_path / "none.sock")).send("READY=1") is False


async def test_ready_after_accepting_then_watchdog_status_and_stopping(tmp_path: Path) -> None:
    with (
        notify_socket(tmp_path) as (path, sock),
        running(tmp_path, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}) as server,
    ):
        # The heartbeat job may say STATUS= during start-up; READY waits for the port.
        while "READY" not in (first := next_message(sock, timeout=60)):
            assert "STOPPING" not in first
        assert first["READY"] == "1", first
        assert first["MAINPID"] == str(server.proc.pid)
        assert first["STATUS"].endswith("0 connections")
        assert server.accepts()

        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"{server.url}/api/v1/ws") as ws,
        ):
            assert (await ws.receive_json())["type"] == "connection"
            assert (await ws.receive_json())["type"] == "subscribed"
            watchdogs, status = 0, ""
            while watchdogs < 2 or status != "1 connection":
                msg = next_message(sock)
                watchdogs += msg.get("WATCHDOG") == "1"
                status = msg.get("STATUS", status)
            server.proc.send_signal(signal.SIGTERM)
            while "STOPPING" not in (msg := next_message(sock)):
                pass
            assert msg["STOPPING"] == "1"
            while (frame := await ws.receive(timeout=30)).type is aiohttp.WSMsgType.TEXT:
                pass
            assert frame.type is aiohttp.WSMsgType.CLOSE, frame
            assert frame.data == 1001
        assert server.proc.wait(timeout=60) == 0
