"""The socket side of the client: one reader task owns the socket. It connects (with
backoff after a failure), sends the subscriptions and any request queued while offline,
then routes each frame, in order (client/routing.py); a close code no retry can fix
(4001, 4003, 4400) ends it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson

from server.client.backoff import Backoff
from server.client.errors import AuthError, ConnectError, RequestError
from server.client.routing import Routing, StatusCallback
from server.client.subscription import Frame, Subscription

log = logging.getLogger("sensorcast.client")

WS_PATH = "/api/v1/ws"
# Close codes that no retry with the same token can fix (SPEC §4): stop, raise AuthError.
AUTH_CLOSE_CODES = frozenset({4001, 4003})
# 4400: the query itself is bad (e.g. the client_id): also final.
FINAL_CLOSE_CODES = AUTH_CLOSE_CODES | {4400}
# Silence of this many heartbeat intervals (the server pings every interval) = dead peer.
SILENT_INTERVALS = 2.5


def ws_url(url: str) -> str:
    """http(s)://host:port[/] or ws(s)://... -> the WebSocket URL (default path /api/v1/ws)."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.path not in ("", "/") else WS_PATH
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


class Reader(Routing):
    def __init__(
        self,
        url: str,
        token: str | None,
        backoff: Backoff | None,
        heartbeat: float | None,
        client_id: str | None,
        on_status: StatusCallback | None,
        sleep: Callable[[float], Awaitable[None]],
        session: aiohttp.ClientSession | None,
    ) -> None:
        super().__init__(on_status)
        self.url = ws_url(url)
        self.token = token
        self.backoff = backoff or Backoff()
        self.heartbeat = heartbeat
        # A fixed client_id keeps the same identity across reconnects (logs, stats).
        self.client_id = client_id or secrets.token_hex(8)
        self._sleep = sleep
        self._session = session
        self._own_session = session is None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        # Requests made while offline, sent once connected (unless timed out by then).
        self._outbox: dict[str, bytes] = {}
        self.reconnects = 0
        self.connection: Frame | None = None

    async def _connect(self, reconnect: bool = False) -> aiohttp.ClientWebSocketResponse:
        """One connection up to its `connection` frame; AuthError on 4001/4003."""
        assert self._session is not None
        params = {"client_id": self.client_id}
        if self.token:
            params["token"] = self.token
        try:
            ws = await self._session.ws_connect(
                self.url, params=params, heartbeat=self.heartbeat, autoping=True
            )
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectError(f"cannot connect to {self.url}: {exc}") from exc
        msg = await ws.receive()
        if msg.type is not aiohttp.WSMsgType.TEXT:
            code = msg.data if msg.type is aiohttp.WSMsgType.CLOSE else ws.close_code
            reason = msg.extra or ""
            await ws.close()
            if code in FINAL_CLOSE_CODES:
                raise self._final(int(code), str(reason))
            raise ConnectError(f"closed before the greeting ({code} {reason})")
        hello = orjson.loads(msg.data)
        self.connection = hello
        self._ws = ws
        # Channels the server subscribed by default (`general`): not ours unless asked.
        for channel in hello.get("subscriptions", []):
            await ws.send_str(orjson.dumps({"type": "unsubscribe", "channel": channel}).decode())
        for sub in list(self._subs.values()):
            await self._send_subscribe(ws, sub)
        for data in self._outbox.values():
            await ws.send_str(data.decode())
        self._outbox.clear()
        if reconnect:
            self.reconnects += 1
        self._connected.set()
        self._status("connected", client_id=hello.get("client_id"), reconnects=self.reconnects)
        return ws

    def _final(self, code: int, reason: str) -> RequestError | AuthError:
        if code in AUTH_CLOSE_CODES:
            return AuthError(code, reason)
        return RequestError("bad_request", f"the server refused the connection: {reason}")

    async def _send_subscribe(self, ws: aiohttp.ClientWebSocketResponse, sub: Subscription) -> None:
        sub.active = False
        id_ = f"s{next(self._ids)}"
        self._subscribing[id_] = sub
        frame: dict[str, Any] = {"type": "subscribe", "channel": sub.channel, "id": id_}
        if sub.position is not None:
            frame["since"] = sub.position.as_since()
        elif sub.snapshot:
            frame["snapshot"] = True
        await ws.send_str(orjson.dumps(frame).decode())

    async def _run(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        attempt = 0
        try:
            while True:
                code, reason = await self._read(ws)
                self._drop_connection(code, reason)
                if code in FINAL_CLOSE_CODES:
                    self._finish(self._final(int(code), reason))
                    return
                while True:
                    delay = self.backoff.delay(attempt)
                    self._status("reconnecting", attempt=attempt + 1, delay=delay)
                    await self._sleep(delay)
                    attempt += 1
                    try:
                        ws = await self._connect(reconnect=True)
                    except ConnectError as exc:
                        log.debug("reconnect failed: %s", exc)
                        continue
                    break
                attempt = 0
        except (AuthError, RequestError) as exc:
            self._finish(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not leave consumers waiting forever
            log.exception("sensorcast client stopped")
            self._finish(RequestError("internal", f"client failed: {exc}"))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> tuple[int | None, str]:
        """Route frames until the socket ends; returns its close code and reason."""
        interval = (self.connection or {}).get("heartbeat_interval") or 0
        silence = interval * SILENT_INTERVALS if interval else None
        while True:
            try:
                msg = await ws.receive(timeout=silence)
            except TimeoutError:
                await ws.close(code=1001, message=b"no heartbeat")
                return None, "no heartbeat from the server"
            if msg.type is aiohttp.WSMsgType.TEXT:
                self._route(orjson.loads(msg.data))
            elif msg.type is aiohttp.WSMsgType.CLOSE:
                await ws.close()
                return msg.data, msg.extra or ""
            elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                return ws.close_code, str(msg.extra or msg.data or "")

    def _drop_connection(self, code: int | None, reason: str) -> None:
        self._connected.clear()
        self._ws = None
        self._subscribing.clear()
        for sub in self._subs.values():
            sub.active = False
        # Sent but unanswered: whether it ran is unknown, so it is not sent again.
        for id_, fut in list(self._pending.items()):
            if id_ not in self._outbox and not fut.done():
                fut.set_exception(RequestError("disconnected", "the connection was lost"))
        self._status("disconnected", code=code, reason=reason)
