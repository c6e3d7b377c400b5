"""The client: one WebSocket that reconnects by itself and resubscribes from each channel's
last position, requests as futures keyed by id, AuthError instead of a reconnect loop.

One reader task owns the socket: it connects (with backoff after a failure), sends the
subscriptions and any request queued while offline, then routes each frame, in order, to
its request future or to the subscriptions it names. Here: the API and open/close; the
reader is client/reader.py, the routing client/routing.py (Client builds on both).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any

import aiohttp
import orjson

from server.client.backoff import Backoff
from server.client.errors import RequestError, RequestTimeout
from server.client.reader import Reader
from server.client.routing import StatusCallback
from server.client.subscription import Position, Subscription


class Client(Reader):
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
        super().__init__(url, token, backoff, heartbeat, client_id, on_status, sleep, session)
        self.request_timeout = request_timeout
        self._task: asyncio.Task[None] | None = None

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


def connect(url: str, token: str | None = None, **options: Any) -> Client:
    """`async with connect(url, token) as client: ...` (options: see Client)."""
    return Client(url, token, **options)
