"""SIGTERM on a real server process: open sockets get 1001, the request in flight is
answered, the process exits 0, and everything acknowledged is in the database."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from pathlib import Path

import aiohttp

from server import codec
from tests.deploy.process import running


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split()[1])
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return status, await reader.readexactly(length)


async def test_sigterm_closes_sockets_1001_answers_requests_in_flight_and_keeps_rows(
    tmp_path: Path,
) -> None:
    with running(tmp_path, {"server": {"shutdown_timeout": 20}}) as server:
        server.wait_accepting()
        auth = {"Authorization": f"Bearer {server.token()}"}
        async with aiohttp.ClientSession(headers=auth) as session:
            async with session.post(
                f"{server.url}/api/v1/sensors", json={"type": "temperature"}
            ) as resp:
                assert resp.status == 201
                sensor = await resp.json()
            readings = [{"sensor_id": sensor["id"], "values": {"t": float(i)}} for i in range(50)]
            async with session.post(f"{server.url}/api/v1/readings", json=readings) as resp:
                assert resp.status == 201, await resp.text()
            async with session.post(
                f"{server.url}/api/v1/events/general", json={"kind": "before"}
            ) as resp:
                assert resp.status == 202

            sse = await session.get(f"{server.url}/api/v1/sse?channel=general")
            assert sse.status == 200
            assert await sse.content.readuntil(b"\n\n") == b"retry: 3000\n\n"
            assert b"event: subscribed" in await sse.content.readuntil(b"\n\n")
            sockets = [await session.ws_connect(f"{server.url}/api/v1/ws") for _ in range(3)]
            for ws in sockets:
                assert (await ws.receive_json(timeout=30))["type"] == "connection"
                assert (await ws.receive_json(timeout=30))["type"] == "subscribed"

            # A request in flight: its insert waits for the database lock this test holds.
            lock = sqlite3.connect(server.config.base_dir / "var/test.db", isolation_level=None)
            lock.execute("BEGIN IMMEDIATE")
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            body = codec.dumps({"type": "humidity", "name": "in flight"})
            writer.write(
                b"POST /api/v1/sensors HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {server.token()}\r\n".encode()
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
            # Fence: on loopback the request's bytes were in the server's socket before this
            # one's, so once this is answered the loop has read it and started its handler.
            async with session.get(f"{server.url}/api/v1/") as resp:
                assert resp.status == 200

            server.proc.send_signal(signal.SIGTERM)
            for ws in sockets:
                while (msg := await ws.receive(timeout=30)).type is aiohttp.WSMsgType.TEXT:
                    pass
                assert msg.type is aiohttp.WSMsgType.CLOSE, msg
                assert (msg.data, msg.extra) == (1001, "server shutting down")
                await ws.close()
            # The SSE stream ends too (the body finishes: no hang, no reset).
            await asyncio.wait_for(sse.content.read(), 30)
            assert sse.content.at_eof()
            sse.release()
            lock.execute("ROLLBACK")
            lock.close()

            status, answer = await asyncio.wait_for(_read_response(reader), 30)
            writer.close()
            assert status == 201, answer
            in_flight = codec.loads(answer)

        # The bound is server.shutdown_timeout plus the interpreter's exit; the wait is
        # generous for a loaded machine.
        code = await asyncio.to_thread(server.proc.wait, 60)
        assert code == 0, server.stderr
        log = server.stderr
        for bad in ("Traceback", "ERROR", "Task was destroyed", "Unclosed", "never awaited"):
            assert bad not in log, log
    assert sorted(server.rows("SELECT id, type FROM sensors")) == [
        (sensor["id"], "temperature"),
        (in_flight["id"], "humidity"),
    ]
    assert server.rows("SELECT count(*) FROM readings") == [(50,)]
