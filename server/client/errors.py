"""What the client raises."""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """Base of every error the Sensorcast client raises."""


class RequestError(ClientError):
    """The server answered a request (or subscribe) with an `error` frame, or the request
    could not be answered: `timeout`, `disconnected` (the socket dropped while it was in
    flight: it may or may not have run), `closed`."""

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details


class RequestTimeout(RequestError, TimeoutError):
    def __init__(self, message: str) -> None:
        super().__init__("timeout", message)


class AuthError(ClientError):
    """The server closed with 4001 (unauthorized) or 4003 (forbidden): retrying with the
    same token cannot help, so the client stops instead of reconnecting."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class ConnectError(ClientError):
    """The first connection failed (later ones are retried with backoff)."""
