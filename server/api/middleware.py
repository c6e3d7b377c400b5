"""Errors -> the one shape; per-IP REST rate limit; request principal from Authorization or
?token=.

No aiohttp middleware on purpose: a middleware's coroutine frame stays on the stack of every
WebSocket handler for the socket's whole life (~0.7 KB per idle connection with aiohttp's
own current-app middleware, which is only installed when some middleware is). HTTP handlers
are wrapped with `json_errors` instead, and errors the router makes itself (404, 405) are
reshaped in `on_response_prepare`.
"""

from __future__ import annotations

import functools
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping

from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler

from server import codec
from server.api.respond import JSON, error_response
from server.auth import Principal
from server.errors import (
    ApiError,
    BadRequest,
    Forbidden,
    NotFound,
    RateLimited,
    TooLarge,
    Unauthorized,
)
from server.keys import AUTH, METRICS

log = logging.getLogger(__name__)


class RestLimiter:
    """`server.rate_limit` requests/s per client IP with bursts of `server.rate_burst`.

    One token bucket per address, kept as (tokens, updated). Buckets that have refilled
    are forgotten when the table grows past MAX_TRACKED, so a scan from many addresses
    cannot grow it without bound (if they are all still busy, the table is reset: the
    limit fails open rather than eating memory).
    """

    MAX_TRACKED = 100_000

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        # Injectable so a test can hold time still instead of racing the refill.
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        # Requests refused so far (sensorcast_rate_limited_total{transport="rest"}).
        self.refused = 0

    def check(self, ip: str, now: float | None = None) -> None:
        """Count one request from `ip`; RateLimited (with retry_after) when over."""
        now = self.clock() if now is None else now
        tokens, updated = self._buckets.get(ip, (self.burst, now))
        tokens = min(self.burst, tokens + (now - updated) * self.rate)
        if tokens < 1.0:
            self._buckets[ip] = (tokens, now)
            self.refused += 1
            retry = (1.0 - tokens) / self.rate
            raise RateLimited(retry_after=round(retry, 3))
        self._buckets[ip] = (tokens - 1.0, now)
        if len(self._buckets) > self.MAX_TRACKED:
            self._prune(now)

    def _prune(self, now: float) -> None:
        # Within one request of full counts as refilled: forgetting it gives one extra.
        full = self.burst - 1.0
        self._buckets = {
            ip: (tokens, updated)
            for ip, (tokens, updated) in self._buckets.items()
            if tokens + (now - updated) * self.rate < full
        }
        if len(self._buckets) > self.MAX_TRACKED // 2:
            self._buckets.clear()


# Set by setup_routes when server.rate_limit is on. Here rather than in keys.py: only
# json_errors reads it.
REST_LIMITER = web.AppKey("rest_limiter", RestLimiter)

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


REQUEST_ID = "X-Request-ID"
# A client's own id is kept when it is a plain token of sane length, else a new one is made.
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


def request_id(request: web.BaseRequest) -> str:
    """This request's id: the client's X-Request-ID, or a new one; the same all along."""
    rid = request.get("request_id")
    if rid is None:
        given = request.headers.get(REQUEST_ID, "")
        rid = given if _CLIENT_REQUEST_ID.fullmatch(given) else secrets.token_hex(8)
        request["request_id"] = rid
    return str(rid)


def route_pattern(request: web.Request) -> str:
    """The route's pattern (`/api/v1/sensors/{id}`), never the path: a bounded label."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def json_errors(handler: Handler) -> Handler:
    """Wrap an HTTP handler: ApiError, aiohttp HTTP errors and crashes -> the error shape
    (with error.request_id); the request's duration goes to the histogram."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        response = await _answer(handler, request)
        metrics = request.app.get(METRICS)
        if metrics is not None:
            metrics.http_duration.labels(
                request.method, route_pattern(request), str(response.status)
            ).observe(time.perf_counter() - started)
        return response

    return wrapped


async def _answer(handler: Handler, request: web.Request) -> web.StreamResponse:
    try:
        # Only HTTP handlers are wrapped: WebSocket upgrades and frames never count here
        # (sockets have ws.rate_limit per connection and connection limits per IP).
        limiter = request.app.get(REST_LIMITER)
        if limiter is not None:
            limiter.check(request.remote or "unknown")
        return await handler(request)
    except ApiError as exc:
        if isinstance(exc, Unauthorized):
            # Who failed to authenticate, never with what: no token reaches the log.
            log.warning(
                "auth failure from %s on %s %s: %s",
                request.remote,
                request.method,
                request.path,
                exc.message,
                extra={
                    "event": "auth_failure",
                    "remote": request.remote,
                    "request_id": request_id(request),
                },
            )
        return error_response(exc, request_id(request))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(http_error(exc.status, exc.reason), request_id(request))
        response.set_status(exc.status, exc.reason)
        return response
    except Exception:
        log.exception(
            "unhandled error on %s %s",
            request.method,
            request.path,
            extra={"event": "error", "request_id": request_id(request)},
        )
        return error_response(ApiError(), request_id(request))


async def shape_router_errors(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: 404/405 made by the router get the JSON error shape too, and
    every response its X-Request-ID."""
    if response.status == 101:
        # A WebSocket: its id is not kept on the request for the socket's whole life.
        response.headers[REQUEST_ID] = request.get("request_id") or secrets.token_hex(8)
        return
    rid = response.headers[REQUEST_ID] = request_id(request)
    if (
        isinstance(response, web.HTTPException)
        and response.status >= 400
        and response.content_type != JSON
    ):
        error = http_error(response.status, response.reason).body()
        error["request_id"] = rid
        body = codec.dumps({"error": error})
        response.body = body
        response.content_type = JSON
        # The plain-text body's length was already set; headers are not sent yet.
        response.headers[hdrs.CONTENT_LENGTH] = str(len(body))


class UnparsableRequestFilter(logging.Filter):
    """aiohttp logs a request it cannot parse (request line or a header over its limits,
    bad framing) at ERROR with a traceback, before any handler: any client could fill the
    log with tracebacks. Those become one WARNING line; real server errors stay ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= (exc.code or 500) < 500:
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg = "unparsable request from %s: %s"
            record.args = (remote, exc.message[:200])
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        return True


def quiet_unparsable_requests() -> None:
    """Install UnparsableRequestFilter on aiohttp's server logger (once per process)."""
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, UnparsableRequestFilter) for f in logger.filters):
        logger.addFilter(UnparsableRequestFilter())


def bearer_token(request: web.Request, query: Mapping[str, str] | None = None) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return (query if query is not None else request.query).get("token") or None


def request_principal(request: web.Request) -> Principal:
    """Who calls: the bearer token's principal, else anonymous (Unauthorized if disallowed)."""
    return request.app[AUTH].resolve(bearer_token(request), None, None)
