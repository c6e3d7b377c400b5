"""The tiny client behind `sensorcast publish` and `sensorcast tail`."""

from __future__ import annotations

import sys
from urllib.parse import quote

import aiohttp

from server import codec


async def publish_once(url: str, token: str, channel: str, event_json: str) -> int:
    try:
        event = codec.loads(event_json)
    except codec.JSONDecodeError as exc:
        print(f"sensorcast: the event is not valid JSON: {exc}", file=sys.stderr)
        return 2
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{url}/api/v1/events/{quote(channel, safe=':')}", json=event, headers=headers
            ) as resp,
        ):
            body = await resp.text()
    except aiohttp.ClientError as exc:
        print(f"sensorcast: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    print(body)
    return 0 if resp.status < 400 else 1


async def tail_channels(url: str, token: str, channels: list[str]) -> int:
    ws_url = url.replace("http", "ws", 1) + "/api/v1/ws"
    params = [("channel", c) for c in channels] + [("token", token)]
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(ws_url, params=params, heartbeat=30) as ws,
        ):
            while True:
                msg = await ws.receive()
                if msg.type is aiohttp.WSMsgType.TEXT:
                    print(msg.data, flush=True)
                elif msg.type is aiohttp.WSMsgType.CLOSE:
                    # The server's reason says what to fix: `not allowed: user:bob (4003)`.
                    code, reason = msg.data, msg.extra or ""
                    break
                elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    code, reason = ws.close_code, ""
                    break
            print(f"sensorcast: closed: {reason or 'no reason given'} ({code})", file=sys.stderr)
            return 0 if code in (1000, 1001) else 1
    except aiohttp.ClientError as exc:
        print(f"sensorcast: cannot reach {url}: {exc}", file=sys.stderr)
        return 1


async def fetch_stats(url: str, token: str) -> int:
    """GET /api/v1/stats, printed as YAML (readable, still machine-parsable)."""
    import yaml

    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{url}/api/v1/stats", headers={"Authorization": f"Bearer {token}"}
            ) as resp,
        ):
            body = await resp.read()
    except aiohttp.ClientError as exc:
        print(f"sensorcast: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    if resp.status >= 400:
        print(
            f"sensorcast: {url}/api/v1/stats answered {resp.status}: {body.decode()}",
            file=sys.stderr,
        )
        return 1
    print(yaml.safe_dump(codec.loads(body), sort_keys=False), end="")
    return 0
