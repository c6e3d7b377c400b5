"""`sensorcast publish` and `sensorcast tail`, on the Python client (server.client)."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

import orjson

from server.client import (
    AuthError,
    ClientError,
    RequestError,
    Subscription,
    connect,
)


def _say(message: str) -> None:
    print(f"sensorcast: {message}", file=sys.stderr, flush=True)


async def publish_once(url: str, token: str, channel: str, event_json: str) -> int:
    """The event goes through the socket's `request` (events/create, what REST's
    POST /api/v1/events/{channel} runs); prints `{channel, offset, epoch}`."""
    try:
        event = orjson.loads(event_json)
    except orjson.JSONDecodeError as exc:
        _say(f"the event is not valid JSON: {exc}")
        return 2
    try:
        async with connect(url, token) as client:
            result = await client.request("events", "create", {"channel": channel, "event": event})
    except ClientError as exc:
        return _failed(exc)
    print(orjson.dumps(result).decode())
    return 0


def _failed(exc: ClientError) -> int:
    """One line on stderr for what ended a command; its exit status."""
    if isinstance(exc, AuthError):
        _say(f"refused: {exc.reason} ({exc.code})")
    elif isinstance(exc, RequestError):
        details = f" {orjson.dumps(exc.details).decode()}" if exc.details else ""
        _say(f"{exc.code}: {exc.message}{details}")
    else:  # ConnectError: its message names the URL
        _say(str(exc))
    return 1


def _status(event: str, details: dict[str, Any]) -> None:
    """Reconnects and unrecoverable gaps, on stderr (stdout stays one frame per line)."""
    if event == "disconnected":
        _say(f"disconnected ({details.get('code')} {details.get('reason') or ''})".rstrip())
    elif event == "reconnecting":
        _say(f"reconnecting in {details['delay']:.1f} s (attempt {details['attempt']})")
    elif event == "connected" and details.get("reconnects"):
        _say("reconnected")
    elif event == "gap":
        _say(f"{details['channel']}: events were missed and could not be recovered")


async def _print(sub: Subscription) -> None:
    await sub.ready()
    position = sub.position
    _say(f"tailing {sub.channel} after offset {position.offset if position else 0}")
    async for frame in sub:
        if frame.get("type") == "subscribed":
            continue  # a gap: already said on stderr by _status
        print(orjson.dumps(frame).decode(), flush=True)


async def tail_channels(url: str, token: str, channels: list[str]) -> int:
    """Print each channel's frames, one JSON per line, until interrupted.

    SIGINT is asyncio.run's: it cancels this task, the client closes with 1000, and
    cli.main() exits 130. SIGTERM (kill, timeout, systemd) is turned into the same
    cancellation here, and exits 143 (128 + 15, as a shell reports a SIGTERM); left to its
    default it would end the process without a close frame (the server sees 1006)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    terminated = False

    def terminate() -> None:
        nonlocal terminated
        terminated = True
        task.cancel()

    loop.add_signal_handler(signal.SIGTERM, terminate)
    try:
        async with connect(url, token, on_status=_status) as client:
            subs = [client.subscribe(channel) for channel in channels]
            await asyncio.gather(*(_print(sub) for sub in subs))
    except ClientError as exc:
        return _failed(exc)
    except asyncio.CancelledError:
        if not terminated:
            raise
        task.uncancel()
        return 128 + signal.SIGTERM
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
    return 0


async def fetch_stats(url: str, token: str) -> int:
    """`sensorcast stats`: GET /api/v1/stats, printed as YAML (readable, still parsable)."""
    import aiohttp
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
        _say(f"cannot reach {url}: {exc}")
        return 1
    if resp.status >= 400:
        _say(f"{url}/api/v1/stats answered {resp.status}: {body.decode()}")
        return 1
    print(yaml.safe_dump(orjson.loads(body), sort_keys=False), end="")
    return 0
