"""Property-based fuzzing of WebSocket frames against a real aiohttp test server.

Whatever a client sends (random JSON, wrong types, huge numbers, deep nesting, unicode,
binary frames, `request` frames for every operation with hostile payloads), the socket
answers with well-formed frames (an `error` with a known code where it refuses), stays
open and usable (a following ping gets its pong), and the server logs no ERROR (no
unhandled exception). The number of frames sent is reported in the run's summary.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server import codec
from server.api.operations import operations_of
from server.api.routes import OPERATION_FUNCTIONS
from server.app import create_app
from server.keys import AUTH, HUB, SERVICES
from server.ws.frames import ERROR_CODES
from tests.conftest import WS, eventually, make_config, open_ws
from tests.security.conftest import FUZZ_CASES

FRAME_TYPES = [
    "subscribe", "unsubscribe", "publish", "ping", "request", "message", "typing", "read",
    "join_room",
]  # fmt: skip
_TABLE = operations_of(*OPERATION_FUNCTIONS)
OPERATIONS = sorted(_TABLE)
# Each operation's own argument names: payloads that get past the first check.
OPERATION_FIELDS = {
    key: sorted(op.schema().fields) if op.schema is not None else [] for key, op in _TABLE.items()
}
FIELDS = [
    "id", "sensor_id", "location_id", "metric", "values", "timestamp", "limit", "cursor",
    "from", "to", "bucket", "horizon", "resolved", "name", "type", "model", "unit", "tipo",
    "modelo", "thresholds", "metadata", "latitude", "longitude", "description", "channel",
    "event", "message", "level", "since", "offset", "epoch", "snapshot", "data", "before",
    "content", "is_typing", "room", "message_id", "payload",
]  # fmt: skip

FUZZ_SETTINGS = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Numbers at and past every boundary a database or a parser has.
big_ints = st.sampled_from(
    [
        0,
        -1,
        1,
        2**31,
        2**31 - 1,
        -(2**31),
        2**53 + 1,
        2**63 - 1,
        2**63,
        -(2**63) - 1,
        2**64,
        10**40,
        -(10**400),
    ]
)
numbers = st.one_of(
    st.integers(),
    big_ints,
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e308, -1e308, 5e-324, -0.0]),
)
texts = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        ["", " ", "\x00", "null", "../../etc/passwd", "'; DROP TABLE sensors; --", "%s%n",
         "ñ", "日本語", "🔥" * 20, "\u202e", "a" * 300, "2024-13-45T99:99:99Z",
         "1970-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "user:admin", "general", "*"]
    ),
)  # fmt: skip
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=12,
)
payloads = st.dictionaries(st.sampled_from(FIELDS), values, max_size=6)
frame_ids = st.one_of(
    st.integers(0, 1000),
    texts,
    st.none(),
    big_ints,
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)


times = st.one_of(
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
    st.sampled_from(["2024-05-01T12:00:00Z", "0001-01-01T00:00:00Z", "2024-05-01", "now", ""]),
)
metric_maps = st.dictionaries(texts, numbers | st.none() | texts, max_size=4)


def plausible(name: str) -> st.SearchStrategy[Any]:
    """A value of the right type for an argument name, at the edges of its range."""
    if name.endswith("id") or name in ("limit", "horizon", "offset", "before"):
        return st.integers(1, 3) | big_ints | st.integers()
    if name in ("from", "to", "timestamp"):
        return times
    if name in ("values", "thresholds"):
        return metric_maps | st.dictionaries(
            texts, st.fixed_dictionaries({}, optional={"min": numbers, "max": numbers}), max_size=3
        )
    if name in ("metadata", "event", "data", "body"):
        return st.dictionaries(texts, values, max_size=4) | st.lists(values, max_size=3)
    if name in ("latitude", "longitude"):
        return numbers
    if name in ("resolved", "snapshot", "is_typing"):
        return st.booleans() | values
    if name == "room":
        return st.sampled_from(["lobby", "a" * 124, "bad room", ""]) | texts
    if name == "bucket":
        return st.sampled_from(["minute", "hour", "day", "1m", "5 minutes", "week", ""]) | texts
    if name == "channel":
        return (
            st.sampled_from(["general", "sensors:1", "user:x", "chat:lobby", "a" * 129, "Bad!"])
            | texts
        )
    return texts


# Frame fields with values of their own type: frames that get past the schema (a message
# in a joined room, a typing flag, a read of a message id) and reach the services.
plausible_payloads = st.lists(st.sampled_from(FIELDS), max_size=4, unique=True).flatmap(
    lambda names: st.fixed_dictionaries({name: plausible(name) for name in names})
)


@st.composite
def operation_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A `request` for a real operation whose payload uses that operation's own fields,
    with values of every type and size; ids mostly of rows that exist."""
    key = draw(st.sampled_from(OPERATIONS))
    names = OPERATION_FIELDS[key]
    payload: dict[str, Any] = {}
    if names:
        chosen = draw(st.lists(st.sampled_from(names), unique=True, max_size=len(names)))
        for name in chosen:
            payload[name] = draw(plausible(name) if draw(st.integers(0, 4)) else values)
    frame_id = draw(st.integers(0, 1000))
    return {
        "type": "request",
        "id": frame_id,
        "resource": key[0],
        "action": key[1],
        "payload": payload,
    }


def deep(n: int, open_: str, close: str) -> str:
    return open_ * n + close * n


@st.composite
def frames(draw: st.DrawFn) -> str | bytes:
    """One client frame: mostly JSON objects shaped like frames, with the wrong parts."""
    kind = draw(st.integers(0, 12))
    if kind >= 10:
        return json.dumps(draw(operation_requests()), ensure_ascii=draw(st.booleans()))
    if kind == 0:  # any JSON at all
        return json.dumps(draw(values))
    if kind == 1:  # not JSON, or JSON orjson refuses (NaN, lone surrogates, huge exponents)
        return draw(
            st.one_of(
                st.text(max_size=50),
                st.sampled_from(
                    ['{"type": NaN}', '{"type": "ping", "id": Infinity}', '{"type":"\\ud800"}',
                     '{"type": "ping", "id": 1e999}', "{", "[]", '""', "null", "{}" * 3]
                ),
            )
        )  # fmt: skip
    if kind == 2:  # nesting around the parser's depth limit
        n = draw(st.sampled_from([10, 100, 500, 1023, 1024, 1025, 3000]))
        inner = (
            deep(n, "[", "]")
            if draw(st.booleans())
            else deep(n, '{"a":', "}").replace('{"a":}', '{"a":1}')
        )
        if '{"a":' in inner:
            inner = '{"a":' * n + "1" + "}" * n
        return (
            '{"type": "request", "resource": "sensors", "action": "list", "payload": '
            + (inner if inner.startswith("{") else '{"x":' + inner + "}")
            + "}"
        )
    if kind == 3:  # binary frame
        return draw(st.binary(max_size=200))
    frame: dict[str, Any] = {"type": draw(st.sampled_from(FRAME_TYPES) | texts | values)}
    if draw(st.booleans()):
        frame["id"] = draw(frame_ids)
    if frame["type"] == "request" or kind >= 7:
        frame["type"] = "request"
        resource, action = draw(st.sampled_from(OPERATIONS))
        frame["resource"] = draw(st.just(resource) | texts) if kind == 7 else resource
        frame["action"] = action
        payload = draw(payloads)
        if draw(st.booleans()):
            payload["id"] = draw(st.integers(1, 3) | big_ints)
        frame["payload"] = payload if kind != 8 else draw(values)
    else:
        frame.update(draw(payloads | plausible_payloads))
    return json.dumps(frame, ensure_ascii=draw(st.booleans()))


async def exchange(ws: WS, frame: str | bytes, marker: int) -> list[dict[str, Any]]:
    """Send one fuzz frame then a ping; the frames that came back before the pong."""
    if isinstance(frame, bytes):
        await ws.ws.send_bytes(frame)
    else:
        await ws.ws.send_str(frame)
    await ws.send({"type": "ping", "id": f"marker-{marker}"})
    got: list[dict[str, Any]] = []
    while True:
        msg = await ws.ws.receive(timeout=10)
        assert msg.type is WSMsgType.TEXT, f"socket ended after {frame!r}: {msg!r}"
        reply = codec.loads(msg.data)
        assert isinstance(reply, dict), reply
        assert isinstance(reply.get("type"), str), reply
        if reply == {**reply, "type": "pong", "id": f"marker-{marker}"}:
            return got
        got.append(reply)


def check_replies(replies: list[dict[str, Any]], frame: str | bytes) -> None:
    for reply in replies:
        assert "timestamp" in reply
        if reply["type"] == "error":
            assert reply["code"] in ERROR_CODES, (frame, reply)
            assert isinstance(reply["message"], str)
            assert reply["code"] != "internal", (frame, reply)


class LiveApp:
    """An app on a real test server, driven from a sync test: hypothesis runs sync
    functions, so each example runs on this private loop (run_until_complete). Each example
    gets a socket of its own, so a failure is that frame's alone and replays by itself."""

    def __init__(self, tmp_path: Path, role: str | None) -> None:
        self.loop = asyncio.new_event_loop()
        self.role = role
        self.markers = itertools.count()
        self.client = self.run(self._start(make_config(tmp_path, {"ws": {"rate_limit": 0}})))
        query = f"&token={self.client.app[AUTH].mint('fuzzer', role)}" if role else ""
        self.path = f"/api/v1/ws?channel=general{query}"

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, 30))

    async def _start(self, config: Any) -> TestClient:
        client = TestClient(TestServer(create_app(config)))
        await client.start_server()
        # Something to read, update and delete: ids 1..3 exist.
        storage = client.app[SERVICES].storage
        for n in range(3):
            await storage.execute("INSERT INTO locations (name) VALUES (?)", f"loc{n}")
            await storage.execute(
                "INSERT INTO sensors (type, thresholds) VALUES (?, ?)", "t", {"t": {"max": 5}}
            )
        return client

    def send(self, frame: str | bytes) -> None:
        """One example: a fresh socket, the frame, a ping fence; the socket must still be
        there, then it is closed and the server has let go of it."""
        replies = self.run(self._example(frame))
        check_replies(replies, frame)

    async def _example(self, frame: str | bytes) -> list[dict[str, Any]]:
        ws = await open_ws(self.client, self.path)
        try:
            replies = await exchange(ws, frame, next(self.markers))
            assert len(self.client.app[HUB].clients) == 1, frame
        finally:
            await ws.close()
        # Its cleanup (presence, subscriptions) runs, and may log, inside this example.
        await eventually(lambda: not self.client.app[HUB].clients)
        return replies

    def close(self) -> None:
        try:
            self.run(self.client.close())
        finally:
            self.loop.close()


def assert_no_errors_logged(caplog: pytest.LogCaptureFixture, frame: Any = None) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, f"after frame {frame!r}:\n" + "\n".join(
        f"{r.name}: {r.getMessage()}\n{r.exc_text}" for r in errors
    )


@pytest.mark.parametrize("role", ["admin", None], ids=["admin", "anonymous"])
def test_fuzzed_frames_get_answers_and_the_socket_stays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, role: str | None
):
    caplog.set_level(logging.WARNING)
    live = LiveApp(tmp_path, role)
    name = f"ws frames ({role or 'anonymous'} socket)"
    try:

        @FUZZ_SETTINGS
        @given(frame=frames())
        def fuzz(frame: str | bytes) -> None:
            FUZZ_CASES[name] += 1
            caplog.clear()
            live.send(frame)
            # Inside the example: a logged ERROR names the frame that caused it.
            assert_no_errors_logged(caplog, frame)

        fuzz()
    finally:
        live.close()
    assert_no_errors_logged(caplog)
