"""The route table: every operation's REST route, the WebSocket routes, HTTP-only handlers."""

from __future__ import annotations

import functools
from typing import Any

import aiohttp_cors
from aiohttp import web

from server import codec
from server.api import auth, chat, notifications, predictions, readings, sensors, sse, system
from server.api.dashboard import setup_dashboard
from server.api.middleware import (
    REST_LIMITER,
    RestLimiter,
    json_errors,
    quiet_unparsable_requests,
    request_principal,
)
from server.api.openapi import build_openapi
from server.api.operations import Ctx, Operation, operations_of
from server.api.respond import JSON, json_response
from server.compat import seed001
from server.compat.routes import seed_routes
from server.errors import BadRequest, InvalidJson, ValidationFailed
from server.keys import CONFIG, HUB, LOGIN_LIMITS, OPENAPI, OPERATIONS, POLICY, SERVICES
from server.ws import endpoint

OPERATION_FUNCTIONS = (
    *system.OPERATIONS,
    *sensors.OPERATIONS,
    *readings.OPERATIONS,
    *predictions.OPERATIONS,
    *chat.OPERATIONS,
    *notifications.OPERATIONS,
)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


async def read_json(request: web.Request, text_body: bool = False) -> Any:
    """The body as JSON; an empty body is an empty object. With text_body, a body that is
    not JSON (whatever its Content-Type) is returned as text."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        return codec.loads(raw)
    except codec.JSONDecodeError as exc:
        if not text_body:
            raise InvalidJson(f"body is not valid JSON: {exc}") from None
    try:
        return raw.decode(request.charset or "utf-8")
    except (UnicodeDecodeError, LookupError):
        raise BadRequest("the body is neither JSON nor text in its charset") from None


def rest_handler(op: Operation, status: int | None = None) -> Any:
    """The REST view of an operation; `status` overrides its success status (seed aliases
    whose clients check for another one)."""

    async def handle(request: web.Request) -> web.Response:
        app = request.app
        ctx = Ctx(request_principal(request), app[SERVICES], app[HUB], app[CONFIG], app[POLICY])
        # Who may call comes first: a caller without the role learns nothing about its input.
        op.authorize(ctx)
        raw: dict[str, Any] = dict(request.query)
        raw.pop("token", None)
        if op.method in _BODY_METHODS:
            body = await read_json(request, op.text_body)
            if op.body_key is not None:
                raw[op.body_key] = body
            elif isinstance(body, dict):
                raw.update(body)
            else:
                raise ValidationFailed(details={"_schema": ["the body must be a JSON object"]})
        raw.update(request.match_info)
        result = await op.execute(ctx, raw)
        if result is None:
            return web.Response(status=204)
        headers = None
        # A create on a collection route names where the new object lives (SPEC §5).
        if op.status == 201 and "{" not in op.path and isinstance(result, dict) and "id" in result:
            headers = {"Location": f"{request.path.rstrip('/')}/{result['id']}"}
        return json_response(result, status=status or op.status, headers=headers)

    handle.__name__ = f"{op.resource}_{op.action}"
    return json_errors(handle)


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type=JSON)


def setup_routes(app: web.Application) -> None:
    operations = operations_of(*OPERATION_FUNCTIONS)
    app[OPERATIONS] = operations
    quiet_unparsable_requests()
    server = app[CONFIG].server
    if server.rate_limit:
        app[REST_LIMITER] = RestLimiter(server.rate_limit, server.rate_burst)
    cors = aiohttp_cors.setup(
        app,
        defaults={
            origin: aiohttp_cors.ResourceOptions(
                allow_credentials=False, expose_headers="*", allow_headers="*"
            )
            for origin in app[CONFIG].server.allowed_origins
        },
    )
    router = app.router
    routes: list[web.AbstractRoute] = [
        router.add_get("/api/v1/", json_errors(system.info)),
        router.add_get("/health", json_errors(system.health)),
        router.add_get("/api/v1/health", json_errors(system.health)),
        router.add_get("/api/v1/openapi.json", json_errors(openapi)),
        router.add_get("/metrics", json_errors(system.metrics)),
        router.add_get("/api/v1/docs", json_errors(system.docs)),
        router.add_get("/api/v1/docs/redoc.standalone.js", json_errors(system.docs_script)),
        router.add_get("/api/v1/asyncapi.json", json_errors(system.asyncapi)),
        router.add_post(auth.LOGIN_PATH, json_errors(auth.login)),
        router.add_post(auth.SEED_LOGIN_PATH, json_errors(auth.login)),
        # EventSource from allowed origins: CORS headers like any REST route.
        router.add_get("/api/v1/sse", json_errors(sse.sse)),
    ]
    app[LOGIN_LIMITS] = auth.LoginLimits(app[CONFIG].auth)
    for op in operations.values():
        routes.append(router.add_route(op.method, op.path, rest_handler(op)))
    # WebSocket routes: Origin is checked by the endpoint itself, before the upgrade.
    router.add_get("/api/v1/ws", endpoint.websocket)
    router.add_get("/api/v1/ws/secure", endpoint.websocket_secure)
    # Seed 001's clients (request/response/event envelopes): SPEC §10.
    router.add_get("/ws", seed001.websocket(app[CONFIG].compat))
    # Seed aliases, including /ws/{x} (the chat shortcut): SPEC §10.
    notify_ok = rest_handler(operations[("notifications", "create")], status=200)
    routes += seed_routes(app, notify_ok)
    routes += setup_dashboard(app)
    for route in routes:
        cors.add(route)
    app[OPENAPI] = codec.dumps(build_openapi(operations.values(), _other_routes(router)))


def _other_routes(router: web.UrlDispatcher) -> list[tuple[str, str, str]]:
    """(method, path, summary) of every route: build_openapi documents the ones that are
    not operations (health, info, docs, metrics, WebSocket upgrades, seed aliases)."""
    out = []
    for route in router.routes():
        resource = route.resource
        if resource is None or route.method in ("HEAD", "OPTIONS", "*"):
            continue
        handler = route.handler
        # A partial's __doc__ is functools' own.
        text = "" if isinstance(handler, functools.partial) else handler.__doc__ or ""
        doc = text.strip().splitlines()
        out.append((route.method, resource.canonical, doc[0] if doc else ""))
    return out
