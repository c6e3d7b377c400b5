"""Requests aiohttp cannot parse, and what the OpenAPI document promises about them.

Found by schemathesis: a query string over aiohttp's 8190-byte request line got a 400
from aiohttp itself, logged at ERROR with a traceback (any client could fill the log
with them), and the document allowed query values that can never fit in a request line.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.api.openapi import REQUEST_LINE_BYTES, build_openapi
from server.api.operations import operations_of
from server.api.routes import OPERATION_FUNCTIONS


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/api/v1/ws/test-event?message=" + "0" * 9000, {}),
        ("/api/v1/", {"X-Big": "a" * 9000}),
    ],
    ids=["long request line", "long header"],
)
async def test_unparsable_request_is_400_and_one_warning_line(
    client: TestClient, caplog: pytest.LogCaptureFixture, path: str, headers: dict[str, str]
):
    caplog.set_level(logging.INFO)

    resp = await client.post(path, headers=headers)

    assert resp.status == 400
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert [(r.levelname, r.exc_info, r.exc_text) for r in records] == [("WARNING", None, None)]
    assert records[0].getMessage().startswith("unparsable request from 127.0.0.1: ")
    # The server is fine afterwards.
    assert (await client.get("/api/v1/")).status == 200


def test_server_errors_in_aiohttp_stay_errors(caplog: pytest.LogCaptureFixture):
    """Only client-side parse errors are quietened, not a handler crash aiohttp reports."""
    from server.api.middleware import quiet_unparsable_requests

    quiet_unparsable_requests()
    logger = logging.getLogger("aiohttp.server")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("Error handling request from %s", "127.0.0.1")
    assert [r.levelname for r in caplog.records] == ["ERROR"]
    assert caplog.records[0].exc_info is not None


DOCUMENT = build_openapi(operations_of(*OPERATION_FUNCTIONS).values())
OPERATIONS = [
    (path, method, item)
    for path, methods in DOCUMENT["paths"].items()
    for method, item in methods.items()
]


@pytest.mark.parametrize(
    ("path", "method", "item"), OPERATIONS, ids=[f"{m} {p}" for p, m, _ in OPERATIONS]
)
def test_documented_query_values_fit_in_a_request_line(
    path: str, method: str, item: dict[str, Any]
):
    longest = f"{method.upper()} {path}?"
    for param in item.get("parameters", []):
        if param["in"] != "query":
            continue
        schema = param["schema"]
        if "enum" in schema:
            value_bytes = max(len(str(v)) for v in schema["enum"])
        elif schema.get("type", "string") == "string":
            value_bytes = schema["maxLength"] * 12  # 4 UTF-8 bytes, percent-encoded
        else:
            value_bytes = 40
        longest += f"{param['name']}={'x' * value_bytes}&"
    assert len(longest + " HTTP/1.1") <= REQUEST_LINE_BYTES


@pytest.mark.parametrize(
    ("path", "method", "item"), OPERATIONS, ids=[f"{m} {p}" for p, m, _ in OPERATIONS]
)
def test_every_operation_documents_its_answers(path: str, method: str, item: dict[str, Any]):
    responses = item["responses"]
    assert "default" in responses
    assert set(responses["400"]["content"]) == {"application/json", "text/plain"}
    (success,) = (code for code in responses if code.startswith("2"))
    if success == "204":
        assert "content" not in responses[success]
    else:
        schema = responses[success]["content"]["application/json"]["schema"]
        if "$ref" in schema:
            schema = DOCUMENT["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        assert schema["type"] == "object"
        if item["operationId"].endswith("_list"):
            assert schema["required"] == ["items", "next_cursor"]
