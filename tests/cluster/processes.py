"""Real server processes (`python -m server serve`) for the tests that need them: a killed
instance, and two instances behind a real HAProxy."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import is_ci
from tests.redis_util import free_port

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0


def wait_http(port: int, path: str = "/health", timeout: float = START_TIMEOUT) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing answered on port {port} in time")
        time.sleep(0.1)


class ServerProcess:
    """One Sensorcast instance; its config sits in `workdir` beside the others', so they
    share var/ (the JWT secret) and the SQLite file."""

    def __init__(self, workdir: Path, name: str, overrides: dict[str, Any]) -> None:
        self.port = free_port()
        self.config = workdir / f"{name}.yaml"
        data: dict[str, Any] = {
            "server": {"host": "127.0.0.1", "port": self.port},
            "database": {"url": f"sqlite:///{workdir}/shared.db"},
            "logging": {"level": "WARNING"},
        }
        for section, values in overrides.items():
            data.setdefault(section, {}).update(values)
        self.config.write_text(yaml.safe_dump(data))
        self.log = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SENSORCAST_")}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server", "--config", str(self.config), "serve"],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=log,
            )
        try:
            wait_http(self.port)
        except AssertionError:
            self.kill()
            raise AssertionError(self.log.read_text()[-3000:]) from None

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as when a VM dies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


HAPROXY_CFG = """\
global
    maxconn 1000
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout tunnel 1h
frontend sensorcast
    bind 127.0.0.1:{port}
    default_backend instances
backend instances
    balance roundrobin
    option httpchk GET /health
{servers}
"""


class HAProxy:
    def __init__(self, workdir: Path, backends: list[int]) -> None:
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(binary).exists():
            if is_ci():  # the suite's one reading of CI (tests/conftest.py)
                pytest.fail("haproxy is not installed (.ci/run installs it)", pytrace=False)
            pytest.skip("haproxy is not installed: apt-get install -y haproxy")
        self.binary = binary
        self.port = free_port()
        servers = "\n".join(
            f"    server s{i} 127.0.0.1:{port} check inter 1s" for i, port in enumerate(backends)
        )
        self.config = workdir / "haproxy.cfg"
        self.config.write_text(HAPROXY_CFG.format(port=self.port, servers=servers))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "-f", str(self.config), "-db"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_http(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None
