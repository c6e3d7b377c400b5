"""Redis for the tests: the machine's server, isolated by key prefix, never flushed.

SENSORCAST_TEST_REDIS_URL overrides redis://127.0.0.1:6379/0. Every test run has its own
prefix (and every backend in it one below that); its keys are deleted by pattern at the
end. Unreachable: the Redis tests skip with a loud reason, or fail under CI. Tests that
kill Redis start a private redis-server on a free port and kill only that process.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import is_ci

DEFAULT_URL = "redis://127.0.0.1:6379/0"
RUN_PREFIX = f"sc_test_{uuid.uuid4().hex[:8]}"
_numbers = itertools.count(1)
UNREACHABLE = "Redis not reachable at"


def redis_url() -> str:
    return os.environ.get("SENSORCAST_TEST_REDIS_URL") or DEFAULT_URL


def require_redis() -> str:
    url = redis_url()
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        client.ping()
        client.close()
    except Exception as exc:
        message = f"{UNREACHABLE} {url}: {type(exc).__name__}: {exc}"
        if is_ci():  # the suite's one reading of CI (tests/conftest.py)
            pytest.fail(f"{message} (CI is set: the Redis tests must run)", pytrace=False)
        pytest.skip(f"{message}; set SENSORCAST_TEST_REDIS_URL")
    return url


def new_prefix() -> str:
    return f"{RUN_PREFIX}:{next(_numbers)}"


def delete_prefix(url: str, prefix: str) -> None:
    """Delete this prefix's keys (SCAN + DEL, never FLUSH)."""
    with contextlib.suppress(Exception):
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
        client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A redis-server of this test alone, on a free port, that it may kill and restart."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.port = free_port()
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=0.5).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def redis_server_url() -> str:
    return require_redis()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()
