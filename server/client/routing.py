"""Where each frame the server sends goes: an answer to its request's future, a
`subscribed` or subscribe error to the subscription awaiting it, a publication to every
subscription it names; and the end, when everything waiting gets its answer or error.

Routing holds what frames are routed to; Reader (the socket, client/reader.py) and Client
(the API, client/connection.py) build on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from server.client.errors import AuthError, RequestError
from server.client.subscription import Frame, Subscription

# Status callback: (event, details); events: connected, disconnected, reconnecting, gap.
StatusCallback = Callable[[str, dict[str, Any]], None]


class Routing:
    def __init__(self, on_status: StatusCallback | None) -> None:
        self.on_status = on_status
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._subs: dict[str, Subscription] = {}
        # subscribe frame id -> subscription awaiting its `subscribed`.
        self._subscribing: dict[str, Subscription] = {}
        self._connected = asyncio.Event()
        self._closed = False
        self.error: BaseException | None = None

    def _status(self, event: str, **details: Any) -> None:
        if self.on_status is not None:
            self.on_status(event, details)

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
