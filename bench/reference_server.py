"""Reference pub/sub server for `sensorcast bench`, built on `websockets.broadcast()`.

It speaks the slice of Sensorcast's protocol that the bench uses, so the load generator
drives both servers with the same bytes:

- connect to ``ws://HOST:PORT/?channel=NAME[,NAME...]``; the server sends ``connection``
  then one ``subscribed`` per channel;
- a client sends ``{"type": "publish", "id": n, "channel": C, "data": {...}}``; every
  subscriber of C gets ``{"type": "event", "channel", "offset", "epoch", "timestamp",
  "data"}`` (serialized once, sent with ``websockets.broadcast``) and the publisher gets
  ``{"type": "response", "id": n, "data": {"channel", "offset", "epoch"}}``;
- ``GET /health`` answers 200 so the bench waits for both servers the same way.

Deliberately minimal (no auth, no history) but correct: per-channel offsets, clean
unsubscribe on disconnect, exit 0 on SIGTERM after closing sockets with 1001.

    python bench/reference_server.py --port 8765
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import uuid
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

EPOCH = uuid.uuid4().hex[:8]
subscribers: dict[str, set[ServerConnection]] = {}
offsets: dict[str, int] = {}


def isotime() -> str:
    # Same shape as Sensorcast's `timestamp` (ms precision, Z) so frames are the same size.
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def health(connection: ServerConnection, request: Request) -> Response | None:
    if urlsplit(request.path).path == "/health":
        return connection.respond(HTTPStatus.OK, "ok\n")
    return None


def publish(channel: str, data: Any) -> int:
    offset = offsets.get(channel, 0) + 1
    offsets[channel] = offset
    frame = orjson.dumps(
        {
            "type": "event",
            "channel": channel,
            "offset": offset,
            "epoch": EPOCH,
            "timestamp": isotime(),
            "data": data,
        }
    )
    # Serialize once; text=True sends the UTF-8 bytes as a text frame without re-encoding.
    broadcast(subscribers.get(channel, ()), frame, text=True)
    return offset


async def handle_frame(ws: ServerConnection, raw: str | bytes) -> None:
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        await ws.send(orjson.dumps({"type": "error", "code": "invalid_json"}), text=True)
        return
    if not isinstance(msg, dict) or msg.get("type") != "publish":
        await ws.send(
            orjson.dumps({"type": "error", "id": _id(msg), "code": "unknown_type"}), text=True
        )
        return
    channel = msg.get("channel")
    if not isinstance(channel, str) or not channel:
        await ws.send(
            orjson.dumps({"type": "error", "id": msg.get("id"), "code": "bad_request"}), text=True
        )
        return
    offset = publish(channel, msg.get("data"))
    reply = {
        "type": "response",
        "id": msg.get("id"),
        "data": {"channel": channel, "offset": offset, "epoch": EPOCH},
    }
    await ws.send(orjson.dumps(reply), text=True)


def _id(msg: Any) -> Any:
    return msg.get("id") if isinstance(msg, dict) else None


async def handler(ws: ServerConnection) -> None:
    query = parse_qs(urlsplit(ws.request.path if ws.request else "/").query)
    channels = [c for v in query.get("channel", ["general"]) for c in v.split(",") if c]
    for channel in channels:
        subscribers.setdefault(channel, set()).add(ws)
    try:
        await ws.send(
            orjson.dumps(
                {
                    "type": "connection",
                    "status": "connected",
                    "client_id": str(ws.id),
                    "subscriptions": channels,
                    "channel": channels[0] if channels else None,
                    "timestamp": isotime(),
                }
            ),
            text=True,
        )
        for channel in channels:
            await ws.send(
                orjson.dumps(
                    {
                        "type": "subscribed",
                        "channel": channel,
                        "offset": offsets.get(channel, 0),
                        "epoch": EPOCH,
                        "timestamp": isotime(),
                    }
                ),
                text=True,
            )
        async for raw in ws:
            await handle_frame(ws, raw)
    except ConnectionClosed:
        pass
    finally:
        for channel in channels:
            subs = subscribers.get(channel)
            if subs is not None:
                subs.discard(ws)


async def main(host: str, port: int) -> None:
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(
        handler,
        host,
        port,
        process_request=health,
        # Sensorcast runs the bench with compression and heartbeats off; match it.
        compression=None,
        ping_interval=None,
        max_size=64 * 1024,
        server_header=None,
        backlog=1024,
    ) as server:
        await stop
        # Going away (1001), like Sensorcast on SIGTERM.
        server.close(close_connections=True)
        await server.wait_closed()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a runtime dependency
        asyncio.run(main(args.host, args.port))
    else:
        uvloop.run(main(args.host, args.port))
