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


def build_openapi(operations: Iterable[Operation]) -> dict[str, Any]:
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
                str(op.status): {"description": "success", "content": {"application/json": {}}},
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
    for path, methods in paths.items():
        spec.path(path=path, operations=methods)
    return spec.to_dict()


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
