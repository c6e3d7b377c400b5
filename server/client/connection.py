"""The client: one WebSocket that reconnects by itself and resubscribes from each channel's
last position, requests as futures keyed by id, AuthError instead of a reconnect loop.

One reader task owns the socket: it connects (with backoff after a failure), sends the
subscriptions and any request queued while offline, then routes each frame, in order, to
its request future or to the subscriptions it names.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson

from server.client.backoff import Backoff
from server.client.errors import AuthError, ConnectError, RequestError, RequestTimeout
from server.client.subscription import Frame, Position, Subscription

log = logging.getLogger("sensorcast.client")

WS_PATH = "/api/v1/ws"
# Close codes that no retry with the same token can fix (SPEC §4): stop, raise AuthError.
AUTH_CLOSE_CODES = frozenset({4001, 4003})
# 4400: the query itself is bad (e.g. the client_id): also final.
FINAL_CLOSE_CODES = AUTH_CLOSE_CODES | {4400}
# Silence of this many heartbeat intervals (the server pings every interval) = dead peer.
SILENT_INTERVALS = 2.5
# Status callback: (event, details); events: connected, disconnected, reconnecting, gap.
StatusCallback = Callable[[str, dict[str, Any]], None]


def ws_url(url: str) -> str:
    """http(s)://host:port[/] or ws(s)://... -> the WebSocket URL (default path /api/v1/ws)."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.path not in ("", "/") else WS_PATH
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


class Client:
    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        backoff: Backoff | None = None,
        request_timeout: float = 10.0,
        heartbeat: float | None = None,
        client_id: str | None = None,
        on_status: StatusCallback | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.url = ws_url(url)
        self.token = token
        self.backoff = backoff or Backoff()
        self.request_timeout = request_timeout
        self.heartbeat = heartbeat
        # A fixed client_id keeps the same identity across reconnects (logs, stats).
        self.client_id = client_id or secrets.token_hex(8)
        self.on_status = on_status
        self._sleep = sleep
        self._session = session
        self._own_session = session is None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[Any]] = {}
        # Requests made while offline, sent once connected (unless timed out by then).
        self._outbox: dict[str, bytes] = {}
        self._subs: dict[str, Subscription] = {}
        # subscribe frame id -> subscription awaiting its `subscribed`.
        self._subscribing: dict[str, Subscription] = {}
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._closed = False
        self.error: BaseException | None = None
        self.reconnects = 0
        self.connection: Frame | None = None

    # Lifecycle

    async def __aenter__(self) -> Client:
        await self.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Connect once (raising AuthError or ConnectError), then keep connected."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            ws = await self._connect()
        except BaseException:
            await self.close()
            raise
        self._task = asyncio.get_running_loop().create_task(self._run(ws))

    async def close(self) -> None:
        """Close with 1000, end every subscription, fail what is pending with `closed`."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._ws is not None:
            await self._ws.close()
            self._ws = None
        self._finish(None)
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        await self._connected.wait()

    # API

    def subscribe(
        self,
        channel: str,
        since: Position | Mapping[str, Any] | None = None,
        snapshot: bool = False,
    ) -> Subscription:
        """An async iterator of `channel`'s frames; resubscribed after each reconnect."""
        self._check_open()
        if channel in self._subs:
            raise ValueError(f"already subscribed to {channel}")
        if since is not None and not isinstance(since, Position):
            since = Position(int(since["offset"]), str(since["epoch"]))
        sub = Subscription(channel, since, snapshot, self._unsubscribe)
        self._subs[channel] = sub
        if self._ws is not None and self.connected:
            asyncio.get_running_loop().create_task(self._send_subscribe(self._ws, sub))
        return sub

    async def request(
        self,
        resource: str,
        action: str,
        payload: Mapping[str, Any] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - per request, default request_timeout
    ) -> Any:
        """The operation's `data`; raises RequestError(code, message, details)."""
        frame = {"type": "request", "resource": resource, "action": action}
        return await self._call(frame | {"payload": dict(payload or {})}, timeout)

    async def publish(
        self,
        channel: str,
        data: Any,
        timeout: float | None = None,  # noqa: ASYNC109 - as request()
    ) -> Any:
        """A client publish (where the namespace allows it): `{channel, offset, epoch}`."""
        return await self._call({"type": "publish", "channel": channel, "data": data}, timeout)

    async def refresh(self, token: str) -> Any:
        """A newer token for the same user before the current one expires (the server
        closes with 4001 "token expired" otherwise); later reconnects use it too."""
        data = await self._call({"type": "refresh", "token": token}, None)
        self.token = token
        return data

    async def send(
        self,
        frame: Mapping[str, Any],
        timeout: float | None = None,  # noqa: ASYNC109 - as request()
        reply: bool = True,
    ) -> Any:
        """Any client frame (message, typing, join_room, ping...). With reply, the answer
        frame (pong, message_sent, response...) or RequestError; without (typing, which
        has no answer), sent if connected and dropped if not: it would be stale later."""
        if reply:
            return await self._call(dict(frame), timeout)
        self._check_open()
        if self._ws is not None and self.connected:
            await self._ws.send_str(orjson.dumps(dict(frame)).decode())
        return None

    # Internals

    def _check_open(self) -> None:
        if self.error is not None:
            raise self.error
        if self._closed:
            raise RequestError("closed", "the client is closed")

    async def _call(self, frame: dict[str, Any], timeout: float | None) -> Any:  # noqa: ASYNC109
        self._check_open()
        id_ = str(next(self._ids))
        frame["id"] = id_
        data = orjson.dumps(frame)
        fut = self._pending[id_] = asyncio.get_running_loop().create_future()
        if self._ws is not None and self.connected:
            await self._ws.send_str(data.decode())
        else:
            self._outbox[id_] = data
        wait = self.request_timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(asyncio.shield(fut), wait)
        except TimeoutError:
            raise RequestTimeout(f"no answer to {frame['type']} within {wait} s") from None
        finally:
            self._pending.pop(id_, None)
            self._outbox.pop(id_, None)

    async def _unsubscribe(self, sub: Subscription) -> None:
        if self._subs.get(sub.channel) is not sub:
            return
        del self._subs[sub.channel]
        sub.end()
        if self.connected and self._ws is not None:
            with contextlib.suppress(RequestError):
                await self._call({"type": "unsubscribe", "channel": sub.channel}, None)

    def _status(self, event: str, **details: Any) -> None:
        if self.on_status is not None:
            self.on_status(event, details)

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

    def _route(self, frame: Frame) -> None:
        kind = frame.get("type")
        id_ = frame.get("id")
        if kind == "subscribed" and id_ in self._subscribing:
            sub = self._subscribing.pop(id_)
            if self._subs.get(sub.channel) is sub:
                had_position = sub.position is not None
                sub.on_subscribed(frame)
                if had_position and frame.get("recovered") is False:
                    self._status("gap", channel=sub.channel)
            return
        if kind == "error" and id_ in self._subscribing:
            sub = self._subscribing.pop(id_)
            self._subs.pop(sub.channel, None)
            sub.fail(RequestError(frame["code"], frame["message"], frame.get("details")))
            return
        if id_ is not None and (fut := self._pending.get(str(id_))) is not None:
            if not fut.done():
                if kind == "error":
                    exc = RequestError(frame["code"], frame["message"], frame.get("details"))
                    fut.set_exception(exc)
                else:
                    fut.set_result(frame.get("data", frame) if kind == "response" else frame)
            return
        channel = frame.get("channel")
        if kind == "subscribed" and frame.get("recovered") is False:
            # Unasked: the server's stream on the channel restarted there without what was
            # in between (scale-out: Redis lost it, or an outage): a gap, surfaced.
            restarted = self._subs.get(channel) if isinstance(channel, str) else None
            if restarted is not None and restarted.active and restarted.position is not None:
                restarted.on_subscribed(frame)
                self._status("gap", channel=restarted.channel)
            return
        if not isinstance(channel, str) or kind in ("subscribed", "unsubscribed"):
            return
        offsets = frame.get("offsets")
        names = offsets.keys() if isinstance(offsets, dict) else (channel,)
        for name in names:
            if (target := self._subs.get(name)) is not None:
                target.on_publication(frame)

    def _finish(self, error: BaseException | None) -> None:
        """The end: with `error` (AuthError...) every consumer gets it, else a clean end."""
        if error is not None and self.error is None:
            self.error = error
        self._closed = True
        self._connected.clear()
        exc = error or RequestError("closed", "the client is closed")
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
        for sub in list(self._subs.values()):
            if error is not None and isinstance(error, AuthError | RequestError):
                sub.fail(error)
            else:
                sub.end()
        self._subs.clear()


def connect(url: str, token: str | None = None, **options: Any) -> Client:
    """`async with connect(url, token) as client: ...` (options: see Client)."""
    return Client(url, token, **options)
