"""REST limits: per-IP rate limit (429 + Retry-After) and the body limit (413), both in the
one error shape; WebSocket upgrades and frames do not count against the REST limit."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from server.api.middleware import REST_LIMITER, RestLimiter
from server.config import load_config
from server.errors import RateLimited
from server.keys import AUTH
from tests.api.test_system import error_of
from tests.conftest import auth_header, open_ws

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_limits_are_generous():
    server = load_config(ROOT / "config.yaml", environ={}).server
    assert (server.rate_limit, server.rate_burst) == (1000, 2000)
    assert server.max_body_bytes == 8 * 1024 * 1024


def test_bucket_allows_the_burst_then_refuses_with_retry_after():
    limiter = RestLimiter(rate=2, burst=3)
    for _ in range(3):
        limiter.check("1.2.3.4", now=100.0)
    with pytest.raises(RateLimited) as exc:
        limiter.check("1.2.3.4", now=100.0)
    assert exc.value.retry_after == 0.5
    assert exc.value.details == {"retry_after": 0.5}
    # Other addresses have their own bucket.
    limiter.check("5.6.7.8", now=100.0)
    # Half a second later one more request fits (rate 2/s).
    limiter.check("1.2.3.4", now=100.5)
    with pytest.raises(RateLimited):
        limiter.check("1.2.3.4", now=100.5)


def test_refused_requests_do_not_dig_the_hole_deeper():
    limiter = RestLimiter(rate=1, burst=1)
    limiter.check("a", now=0.0)
    for _ in range(100):
        with pytest.raises(RateLimited):
            limiter.check("a", now=0.5)
    limiter.check("a", now=1.0)


def test_the_address_table_stays_bounded(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(RestLimiter, "MAX_TRACKED", 100)
    limiter = RestLimiter(rate=10, burst=20)
    for i in range(1000):
        limiter.check(f"10.0.{i // 256}.{i % 256}", now=i / 1000)
        assert len(limiter._buckets) <= 101
    # Idle addresses have refilled and are forgotten first.
    limiter.check("busy", now=10.0)
    for i in range(200):
        limiter.check(f"idle-{i}", now=20.0)
    assert len(limiter._buckets) <= 101


MakeClient = Callable[..., Any]


@pytest.fixture
async def limited(make_client: MakeClient) -> Any:
    """Burst 3 at 1/s, with the limiter's clock held still: the bucket never refills, so
    the counts below do not depend on how fast a loaded machine sends them."""
    client = await make_client({"server": {"rate_limit": 1, "rate_burst": 3}})
    client.app[REST_LIMITER].clock = lambda: 1000.0
    return client


async def test_over_the_limit_is_429_rate_limited_with_retry_after(limited: Any):
    paths = ["/api/v1/", "/api/v1/stats", "/api/v1/sensors"]  # one bucket per address
    for path in paths:
        assert (await limited.get(path)).status == 200

    resp = await limited.get("/api/v1/sensors")

    error = await error_of(resp, 429, "rate_limited")
    assert resp.headers["Retry-After"] == "1"
    assert error["details"] == {"retry_after": 1.0}  # a whole token short at 1/s
    # Writes and the login count too, and are refused before anything else happens.
    tok = limited.app[AUTH].mint("svc", "service")
    resp = await limited.post("/api/v1/events/general", json={}, headers=auth_header(tok))
    await error_of(resp, 429, "rate_limited")
    resp = await limited.post("/api/v1/auth/login", json={"username": "a", "password": "b"})
    await error_of(resp, 429, "rate_limited")


async def test_websocket_upgrades_and_frames_do_not_count(limited: Any):
    sockets = [await open_ws(limited) for _ in range(5)]
    for ws in sockets:
        for _ in range(10):
            assert (await ws.request({"type": "ping"}))["type"] == "pong"
    for _ in range(3):
        assert (await limited.get("/api/v1/")).status == 200
    # The whole burst was still there for REST, and no more (the clock stands still).
    await error_of(await limited.get("/api/v1/"), 429, "rate_limited")


async def test_rate_limit_zero_is_off(make_client: MakeClient):
    client = await make_client({"server": {"rate_limit": 0, "rate_burst": 1}})
    for _ in range(50):
        assert (await client.get("/api/v1/")).status == 200


# -- body limit --------------------------------------------------------------------------------


@pytest.fixture
async def small_body(make_client: MakeClient) -> Any:
    return await make_client({"server": {"max_body_bytes": 2048}})


@pytest.mark.parametrize(
    ("path", "role"),
    [
        ("/api/v1/events/general", "service"),
        ("/api/v1/readings", "device"),
        ("/api/v1/locations", "admin"),
        ("/api/v1/auth/login", None),
    ],
)
async def test_body_over_the_limit_is_413_too_large(small_body: Any, path: str, role: str | None):
    headers = auth_header(small_body.app[AUTH].mint("x", role)) if role else {}
    resp = await small_body.post(path, data=b'{"x": "' + b"a" * 4096 + b'"}', headers=headers)
    error = await error_of(resp, 413, "too_large")
    assert error["details"] is None


async def test_chunked_body_over_the_limit_is_413_too_large(small_body: Any):
    tok = small_body.app[AUTH].mint("x", "service")

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"x": "'
        for _ in range(8):
            yield b"a" * 512
        yield b'"}'

    resp = await small_body.post("/api/v1/events/general", data=chunks(), headers=auth_header(tok))
    await error_of(resp, 413, "too_large")


async def test_oversized_body_from_a_caller_without_the_role_is_403_unread(small_body: Any):
    tok = small_body.app[AUTH].mint("x", "user")
    resp = await small_body.post(
        "/api/v1/events/general", data=b"a" * 100_000, headers=auth_header(tok)
    )
    await error_of(resp, 403, "forbidden")
