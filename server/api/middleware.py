"""Errors -> the one shape; request principal from Authorization or ?token=.

No aiohttp middleware on purpose: a middleware's coroutine frame stays on the stack of every
WebSocket handler for the socket's whole life (~0.7 KB per idle connection with aiohttp's
own current-app middleware, which is only installed when some middleware is). HTTP handlers
are wrapped with `json_errors` instead, and errors the router makes itself (404, 405) are
reshaped in `on_response_prepare`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from server import codec
from server.api.respond import JSON, error_response
from server.auth import Principal
from server.errors import (
    ApiError,
    BadRequest,
    Forbidden,
    NotFound,
    TooLarge,
    Unauthorized,
)
from server.keys import AUTH

log = logging.getLogger(__name__)

_HTTP_ERRORS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    413: TooLarge,
}


def http_error(status: int, reason: str) -> ApiError:
    """Our error for an aiohttp HTTP error status (405 and others: bad_request)."""
    return _HTTP_ERRORS.get(status, BadRequest)(reason)


def json_errors(handler: Handler) -> Handler:
    """Wrap an HTTP handler: ApiError, aiohttp HTTP errors and crashes -> the error shape."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = error_response(http_error(exc.status, exc.reason))
            response.set_status(exc.status, exc.reason)
            return response
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            return error_response(ApiError())

    return wrapped


async def shape_router_errors(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: 404/405 made by the router get the JSON error shape too."""
    if (
        isinstance(response, web.HTTPException)
        and response.status >= 400
        and response.content_type != JSON
    ):
        body = codec.dumps({"error": http_error(response.status, response.reason).body()})
        response.body = body
        response.content_type = JSON
        # The plain-text body's length was already set; headers are not sent yet.
        response.headers[hdrs.CONTENT_LENGTH] = str(len(body))


def bearer_token(request: web.Request, query: Mapping[str, str] | None = None) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return (query if query is not None else request.query).get("token") or None


def request_principal(request: web.Request) -> Principal:
    """Who calls: the bearer token's principal, else anonymous (Unauthorized if disallowed)."""
    return request.app[AUTH].resolve(bearer_token(request), None, None)
