"""Sensorcast's Python client (SPEC §9): needs only aiohttp and orjson, loads nothing else
of the server.

    async with connect("http://127.0.0.1:8000", token) as client:
        async for frame in client.subscribe("readings:1"):
            ...
"""

from server.client.backoff import Backoff
from server.client.connection import Client, connect
from server.client.errors import AuthError, ClientError, ConnectError, RequestError, RequestTimeout
from server.client.subscription import Position, Subscription

__all__ = [
    "AuthError",
    "Backoff",
    "Client",
    "ClientError",
    "ConnectError",
    "Position",
    "RequestError",
    "RequestTimeout",
    "Subscription",
    "connect",
]
