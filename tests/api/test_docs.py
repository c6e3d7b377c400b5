"""GET /api/v1/docs (Redoc served locally), /api/v1/asyncapi.json (frames both ways
validate against it), and an OpenAPI document that lists every route."""

from __future__ import annotations

from typing import Any

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.conftest import WS, auth_header, open_ws


async def test_docs_page_uses_the_vendored_redoc_and_no_cdn(client):
    resp = await client.get("/api/v1/docs")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    page = await resp.text()
    assert 'spec-url="/api/v1/openapi.json"' in page
    assert "https://" not in page
    assert "http://" not in page
    script = await client.get("/api/v1/docs/redoc.standalone.js")
    assert script.status == 200
    assert script.content_type == "text/javascript"
    assert len(await script.read()) > 500_000


async def test_openapi_lists_every_route(client):
    doc = await (await client.get("/api/v1/openapi.json")).json()
    documented = {(m.upper(), p) for p, ms in doc["paths"].items() for m in ms}
    for route in client.app.router.routes():
        if route.resource is None or route.method in ("HEAD", "OPTIONS"):
            continue
        assert (route.method, route.resource.canonical) in documented
    for must in ("/health", "/api/v1/", "/notify", "/ws/{room}", "/metrics", "/api/v1/ws"):
        assert must in doc["paths"], must


class Checked(WS):
    """A socket whose every frame, both ways, must validate against the AsyncAPI doc."""

    def __init__(self, ws: WS, doc: dict[str, Any]) -> None:
        super().__init__(ws.ws)
        schemas = doc["components"]["schemas"]
        registry: Registry = Registry().with_resource(
            "urn:asyncapi", Resource.from_contents(doc, default_specification=DRAFT202012)
        )
        self.validators = {
            name: jsonschema.Draft202012Validator(
                {"$ref": f"urn:asyncapi#/components/schemas/{name}"}, registry=registry
            )
            for name in schemas
        }
        self.seen: set[str] = set()

    def check(self, direction: str, frame: dict[str, Any]) -> None:
        name = f"{direction}.{frame['type']}"
        assert name in self.validators, f"{name} is not in the AsyncAPI document"
        self.validators[name].validate(frame)
        self.seen.add(name)

    async def send(self, frame: dict[str, Any] | str) -> None:
        if isinstance(frame, dict):
            self.check("client", frame)
        await super().send(frame)

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        frame = await super().recv(timeout)
        self.check("server", frame)
        return frame


async def test_frames_both_ways_validate_against_asyncapi(client, token):
    doc = await (await client.get("/api/v1/asyncapi.json")).json()
    assert doc["asyncapi"].startswith("3.")
    tok = token("service", sub="alice")
    a = Checked(await open_ws(client, handshake=False, headers=auth_header(tok)), doc)
    b = Checked(await open_ws(client, handshake=False), doc)
    for ws in (a, b):
        await ws.recv_type("connection")
        await ws.recv_type("subscribed")
    await a.request({"type": "ping", "id": 1})
    await a.request({"type": "subscribe", "id": "s", "channel": "sensors:1"})
    await a.request({"type": "subscribe", "id": "again", "channel": "sensors:1"})  # error
    await a.request({"type": "unsubscribe", "id": 2, "channel": "sensors:1"})
    await a.request({"type": "request", "id": 3, "resource": "stats", "action": "get"})
    await a.send({"type": "join_room", "id": 4, "room": "lobby"})
    await a.recv_type("subscribed")
    await b.send({"type": "join_room", "room": "lobby"})
    await b.recv_type("subscribed")
    await a.recv_type("user_joined")
    await a.send({"type": "message", "id": 5, "content": "hello"})
    await a.recv_type("message_sent")
    msg = await a.recv_type("message")
    assert (await b.recv_type("message"))["data"]["content"] == "hello"
    await b.send({"type": "typing", "is_typing": True})
    await a.recv_type("typing")
    await b.send({"type": "read", "message_id": msg["data"]["id"]})
    await a.recv_type("read_receipt")
    await b.recv_type("read_receipt")
    resp = await client.post("/api/v1/events/general", json={"x": 1}, headers=auth_header(tok))
    assert resp.status == 202
    await b.recv_type("event")
    await a.recv_type("event")
    await a.request({"type": "publish", "id": 6, "channel": "general", "data": {"x": 1}})
    await b.ws.close()
    await a.recv_type("user_left")
    assert {
        "server.connection",
        "server.subscribed",
        "server.pong",
        "server.error",
        "server.unsubscribed",
        "server.response",
        "server.user_joined",
        "server.message_sent",
        "server.message",
        "server.typing",
        "server.read_receipt",
        "server.event",
        "server.user_left",
    } <= a.seen | b.seen
