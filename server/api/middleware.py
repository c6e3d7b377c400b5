"""Errors -> the one shape; request principal from Authorization or ?token=."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from server.api.respond import error_response
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


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = _HTTP_ERRORS.get(exc.status)
        if kind is not None:
            return error_response(kind(exc.reason))
        response = error_response(BadRequest(exc.reason))
        response.set_status(exc.status, exc.reason)
        if exc.status == 405:
            response.headers["Allow"] = exc.headers.get("Allow", "")
        return response
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(ApiError())


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.query.get("token") or None


def request_principal(request: web.Request) -> Principal:
    """Who calls: the bearer token's principal, else anonymous (Unauthorized if disallowed)."""
    return request.app[AUTH].resolve(bearer_token(request), None, None)
