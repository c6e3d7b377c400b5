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


def error_response(exc: ApiError, request_id: str | None = None) -> web.Response:
    """The error shape; `request_id` (the response's X-Request-ID) goes in as
    error.request_id, so a user's bug report names the log line."""
    headers = None
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
    body = exc.body()
    if request_id is not None:
        body["request_id"] = request_id
    return json_response({"error": body}, status=exc.status, headers=headers)
