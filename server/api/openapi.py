"""OpenAPI 3 document from the operations' marshmallow schemas (apispec)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from server import __version__
from server.api.auth import LOGIN_PATH, LoginIn, LoginOut
from server.api.operations import Operation

_PATH_PARAM = re.compile(r"{(\w+)}")
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {},
            },
        }
    },
}


def build_openapi(
    operations: Iterable[Operation], other_routes: Iterable[tuple[str, str, str]] = ()
) -> dict[str, Any]:
    """Operations from their schemas; `other_routes` (method, path, summary) that are not
    operations get an entry of their own, so the document lists every route."""
    spec = APISpec(
        title="Sensorcast",
        version=__version__,
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
        info={
            "description": "Real-time push server: REST API (the same operations as WS `request`)."
        },
    )
    spec.components.schema("Error", ERROR_SCHEMA)
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    error_ref = {"$ref": "#/components/schemas/Error"}
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        path_params = _PATH_PARAM.findall(op.path)
        item: dict[str, Any] = {
            "operationId": f"{op.resource}_{op.action}",
            "summary": op.summary,
            "tags": [op.resource],
            "responses": {
                str(op.status): _success(op),
                "default": {
                    "description": "error",
                    "content": {"application/json": {"schema": error_ref}},
                },
            },
        }
        if op.roles is not None:
            item["security"] = [{"bearer": []}]
        parameters: list[dict[str, Any]] = [
            {"in": "path", "name": p, "required": True, "schema": {"type": "string"}}
            for p in path_params
        ]
        if op.schema is not None:
            fields = set(op.schema().fields) - set(path_params)
            if op.body_key is not None:
                item["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            elif fields and op.args_in == "body":
                item["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": op.schema(only=fields)}},
                }
            elif fields:
                parameters.append({"in": "query", "schema": op.schema(only=fields)})
        if parameters:
            item["parameters"] = parameters
        paths.setdefault(op.path, {})[op.method.lower()] = item
    paths[LOGIN_PATH] = {"post": _login(error_ref)}
    for method, path, summary in other_routes:
        methods = paths.setdefault(path, {})
        if method.lower() not in methods:
            methods[method.lower()] = _plain(method, path, summary, error_ref)
    for path, methods in paths.items():
        spec.path(path=path, operations=methods)
    document = spec.to_dict()
    for path, methods in document["paths"].items():
        for item in methods.values():
            _fit_query_in_request_line(path, item.get("parameters", []))
            item["responses"].setdefault("400", _BAD_REQUEST)
    return document


# Every list answers one shape (SPEC §5); other successes are one JSON object.
_PAGE_SCHEMA = {
    "type": "object",
    "required": ["items", "next_cursor"],
    "properties": {
        "items": {"type": "array", "items": {"type": "object"}},
        "next_cursor": {"type": "string", "nullable": True},
    },
}


def _success(op: Operation) -> dict[str, Any]:
    if op.status == 204:
        return {"description": "done, no content"}
    schema = _PAGE_SCHEMA if op.action == "list" else {"type": "object"}
    return {"description": "success", "content": {"application/json": {"schema": schema}}}


# A request aiohttp cannot parse is answered by aiohttp itself, before any handler, in
# plain text; everything else that is a 400 has the error shape.
_BAD_REQUEST = {
    "description": "bad_request / invalid_json; text/plain when the request line or a "
    "header is over the HTTP parser's limit (8190 bytes)",
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}},
        "text/plain": {"schema": {"type": "string"}},
    },
}


# aiohttp refuses a request line over 8190 bytes (400 before any handler runs), so what a
# query string can carry is bounded whatever a field's validator allows. Each free-text
# query parameter is documented with the length that is sure to fit: an equal share of
# the line, at 12 bytes a character (4 UTF-8 bytes, each percent-encoded).
REQUEST_LINE_BYTES = 8190
_BYTES_PER_CHAR = 12


def _fit_query_in_request_line(path: str, parameters: list[dict[str, Any]]) -> None:
    free_text = [
        p["schema"]
        for p in parameters
        if p.get("in") == "query"
        and p.get("schema", {}).get("type", "string") == "string"
        and "enum" not in p.get("schema", {})
    ]
    if not free_text:
        return
    names = sum(len(p["name"]) + 2 for p in parameters)
    # Numbers, booleans and enum values: a generous 64 bytes each.
    others = 64 * (len(parameters) - len(free_text))
    budget = REQUEST_LINE_BYTES - len("DELETE  HTTP/1.1") - len(path) * 3 - names - others - 64
    cap = budget // (len(free_text) * _BYTES_PER_CHAR)
    for schema in free_text:
        schema["maxLength"] = min(schema.get("maxLength", cap), cap)


def _plain(method: str, path: str, summary: str, error_ref: dict[str, str]) -> dict[str, Any]:
    """A route with no schema of its own: what it is, and that errors have the one shape."""
    ws = path in ("/ws", "/api/v1/ws", "/api/v1/ws/secure") or path.startswith("/ws/")
    name = re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_") or "root"
    item: dict[str, Any] = {
        "operationId": f"{method.lower()}_{name}",
        "summary": summary or f"{method} {path}",
        "tags": ["websocket" if ws and method == "GET" else "system"],
        "responses": {
            "101" if ws and method == "GET" else "200": {
                "description": "WebSocket upgrade (protocol: /api/v1/asyncapi.json)"
                if ws and method == "GET"
                else "success"
            },
            "default": {
                "description": "error",
                "content": {"application/json": {"schema": error_ref}},
            },
        },
    }
    params = _PATH_PARAM.findall(path)
    if params:
        item["parameters"] = [
            {"in": "path", "name": p, "required": True, "schema": {"type": "string"}}
            for p in params
        ]
    return item


def _login(error_ref: dict[str, str]) -> dict[str, Any]:
    """The login view is HTTP-only (no @operation): documented here by hand."""
    return {
        "operationId": "auth_login",
        "summary": "Exchange a username and password for a JWT",
        "tags": ["auth"],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": LoginIn}},
        },
        "responses": {
            "200": {
                "description": "a token for that user",
                "content": {"application/json": {"schema": LoginOut}},
            },
            "default": {
                "description": "error (401 for a wrong username or password)",
                "content": {"application/json": {"schema": error_ref}},
            },
        },
    }
