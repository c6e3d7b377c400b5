"""AsyncAPI 3 document of the native WebSocket protocol (/api/v1/ws), both directions.

Client frames come from the dispatcher's own @command schemas (marshmallow -> JSON Schema
through apispec's converter), so a new command is documented by being registered. Server
frames are the table below: the frame builders take free keyword fields, so their shape is
written down once here, and the tests validate every frame they receive against it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from server import __version__
from server.bus import PUBLICATION_TYPES
from server.ws import frames
from server.ws.commands import Command

_STR = {"type": "string"}
_INT = {"type": "integer"}
_TS = {"type": "string", "format": "date-time", "description": "UTC, milliseconds"}
_ID = {"type": ["string", "integer"], "description": "the client frame's id, echoed"}
_USER = {"type": "object", "properties": {"user_id": _STR, "username": _STR}}


def _frame(required: list[str], props: dict[str, Any], doc: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": doc,
        "required": ["type", "timestamp", *required],
        "properties": {"timestamp": _TS, **props},
    }


_PUBLICATION = (
    ["channel", "offset", "epoch"],
    {"channel": _STR, "offset": _INT, "epoch": _STR, "offsets": {"type": "object"}},
)
SERVER_FRAMES: dict[str, dict[str, Any]] = {
    "connection": _frame(
        ["status", "client_id", "user", "subscriptions", "channel", "heartbeat_interval"],
        {
            "status": {"const": "connected"},
            "client_id": _STR,
            "user": {"type": "object"},
            "subscriptions": {"type": "array", "items": _STR},
            "channel": _STR,
            "heartbeat_interval": {"type": "number"},
        },
        "first frame on every socket",
    ),
    "subscribed": _frame(
        ["channel", "offset", "epoch"],
        {
            "id": _ID,
            "channel": _STR,
            "offset": _INT,
            "epoch": _STR,
            "recovered": {"type": "boolean"},
            "presence": {"type": "array", "items": _USER},
        },
        "a subscription is live (after `recovered` history when `since` was given)",
    ),
    "unsubscribed": _frame(["channel"], {"id": _ID, "channel": _STR}, "left a channel"),
    "response": _frame(["data"], {"id": _ID, "data": {}}, "answer to `request` or `publish`"),
    "pong": _frame([], {"id": _ID}, "answer to `ping`"),
    "error": _frame(
        ["code", "message"],
        {
            "id": _ID,
            "code": {"enum": sorted(frames.ERROR_CODES)},
            "message": _STR,
            "details": {},
        },
        "a frame failed; the socket stays open",
    ),
    "message_sent": _frame(
        ["message_id", "data"],
        {"id": _ID, "message_id": _INT, "data": {"type": "object"}},
        "a chat `message` was stored",
    ),
    **{
        kind: _frame(_PUBLICATION[0], _PUBLICATION[1], f"publication of type {kind}")
        for kind in sorted(PUBLICATION_TYPES | {"read_receipt"})
    },
    **{
        kind: _frame(["channel", "data"], {"channel": _STR, "data": {"type": "object"}}, doc)
        for kind, doc in (
            ("user_joined", "presence: a user's first socket joined the channel"),
            ("user_left", "presence: a user's last socket left the channel"),
            ("typing", "someone is typing in a chat room (no offset, not recovered)"),
        )
    },
}
for _kind, _schema in SERVER_FRAMES.items():
    _schema["properties"]["type"] = {"const": _kind}


def client_frame_schemas(commands: Iterable[Command]) -> dict[str, dict[str, Any]]:
    """`client.{type}` -> JSON Schema of that command's frame, plus the nested schemas they
    refer to (under their class names), all as components/schemas entries."""
    spec = APISpec("x", "1", "3.1.0", plugins=[MarshmallowPlugin()])
    types = []
    for cmd in commands:
        # An instance of the schema's own class per command: commands may share one class.
        spec.components.schema(f"client.{cmd.type}", schema=type(cmd.schema)())
        types.append(cmd.type)
    out: dict[str, dict[str, Any]] = spec.to_dict()["components"]["schemas"]
    for kind in types:
        schema = out[f"client.{kind}"]
        schema["properties"]["type"] = {"const": kind}
        schema["properties"]["id"] = _ID
        schema["required"] = sorted({"type", *schema.get("required", [])})
        # Unknown fields are ignored by the server (Frame.Meta.unknown = EXCLUDE).
        schema["additionalProperties"] = True
    return out


ARROWS = {"client": "client -> server", "server": "server -> client"}


def build_asyncapi(commands: Iterable[Command]) -> dict[str, Any]:
    schemas = client_frame_schemas(commands)
    client = [name.partition(".")[2] for name in schemas if name.startswith("client.")]
    messages: dict[str, Any] = {}
    for direction, kinds in (("client", client), ("server", list(SERVER_FRAMES))):
        for kind in kinds:
            name = f"{direction}.{kind}"
            if direction == "server":
                schemas[name] = SERVER_FRAMES[kind]
            messages[name] = {
                "name": kind,
                "title": f"{kind} ({ARROWS[direction]})",
                "payload": {"$ref": f"#/components/schemas/{name}"},
            }
    ref = "#/channels/ws/messages/"
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Sensorcast WebSocket protocol",
            "version": __version__,
            "description": "JSON text frames on /api/v1/ws (and /api/v1/ws/secure, /ws/{room}). "
            "Every server frame has `type` and `timestamp`. See docs/protocol.md.",
        },
        "servers": {
            "local": {"host": "127.0.0.1:8000", "protocol": "ws", "pathname": "/api/v1/ws"}
        },
        "defaultContentType": "application/json",
        "channels": {
            "ws": {
                "address": "/api/v1/ws",
                "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in messages},
            }
        },
        "operations": {
            "receiveClientFrames": {
                "action": "receive",
                "channel": {"$ref": "#/channels/ws"},
                "summary": "frames a client sends",
                "messages": [{"$ref": f"{ref}client.{k}"} for k in client],
            },
            "sendServerFrames": {
                "action": "send",
                "channel": {"$ref": "#/channels/ws"},
                "summary": "frames the server sends",
                "messages": [{"$ref": f"{ref}server.{k}"} for k in SERVER_FRAMES],
            },
        },
        "components": {"schemas": schemas, "messages": messages},
    }
