"""JSON responses and the one error shape, for every handler and the middleware."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server import codec
from server.errors import ApiError, RateLimited

JSON = "application/json"


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(body=codec.dumps(body), status=status, content_type=JSON, headers=headers)


def error_response(exc: ApiError) -> web.Response:
    headers = None
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
    return json_response({"error": exc.body()}, status=exc.status, headers=headers)
