"""A real `python -m server serve` subprocess on a free port, with a test sd_notify socket."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from server.auth import Authenticator
from server.config import load_config

REPO = Path(__file__).resolve().parents[2]
START_SECONDS = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, tmp: Path, overrides: dict[str, Any], env: dict[str, str]) -> None:
        self.port = free_port()
        data: dict[str, Any] = {
            "server": {"port": self.port, "shutdown_timeout": 5},
            "database": {"url": "sqlite:///var/test.db"},
            "auth": {"jwt_secret": "a-test-secret-of-at-least-thirty-two-bytes"},
            "retention": {"readings_days": 0},
        }
        for section, values in overrides.items():
            data.setdefault(section, {}).update(values)
        self.config_path = tmp / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(data))
        self.config = load_config(self.config_path, environ={})
        self.url = f"http://127.0.0.1:{self.port}"
        self.stderr_path = tmp / "stderr.log"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("SENSORCAST_")}
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server", "--config", str(self.config_path), "serve"],
                cwd=REPO,
                env={**clean, **env},
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def token(self, role: str = "service", sub: str = "ops-test") -> str:
        auth = Authenticator(self.config.auth, self.config.var_dir, self.config.base_dir)
        return auth.mint(sub, role, 600)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def wait_accepting(self) -> None:
        deadline = time.monotonic() + START_SECONDS
        while not self.accepts():
            assert self.proc.poll() is None, f"server exited early:\n{self.stderr}"
            assert time.monotonic() < deadline, f"server never listened:\n{self.stderr}"
            time.sleep(0.05)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(self.config.base_dir / "var/test.db")
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def running(
    tmp: Path, overrides: dict[str, Any] | None = None, env: dict[str, str] | None = None
) -> Iterator[Server]:
    server = Server(tmp, overrides or {}, env or {})
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def notify_socket(tmp: Path) -> Iterator[tuple[str, socket.socket]]:
    """A unix datagram socket standing in for systemd's $NOTIFY_SOCKET."""
    path = str(tmp / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        yield path, sock
    finally:
        sock.close()


def next_message(sock: socket.socket, timeout: float = 30.0) -> dict[str, str]:
    sock.settimeout(timeout)
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines())
