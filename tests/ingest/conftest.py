"""MQTT tests: the machine's Mosquitto (SENSORCAST_TEST_MQTT_URL overrides) for the bridge,
each test under its own topic prefix and client ids; a private `mosquitto` on a free port
for tests that kill the broker (stopped by its PID, never the shared one).

Without a reachable broker the tests skip with a loud reason; with CI set they fail.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from server.mqtt_topics import broker_address
from tests.conftest import is_ci

DEFAULT_URL = "mqtt://127.0.0.1:1883"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def unavailable(reason: str) -> None:
    if is_ci():  # the suite's one reading of CI (tests/conftest.py)
        pytest.fail(f"{reason} (CI is set: the MQTT tests must run)", pytrace=False)
    pytest.skip(f"MQTT TESTS SKIPPED: {reason}")


def broker_url() -> str:
    return os.environ.get("SENSORCAST_TEST_MQTT_URL") or DEFAULT_URL


@pytest.fixture(scope="session")
def shared_broker() -> str:
    url = broker_url()
    address = broker_address(url)
    try:
        socket.create_connection((address.host, address.port), timeout=2).close()
    except OSError as exc:
        unavailable(f"no MQTT broker at {url} ({exc})")
    return url


@dataclass
class Topics:
    """This test's own namespace on the shared broker."""

    prefix: str

    @property
    def pattern(self) -> str:
        return f"{self.prefix}/sensors/{{sensor_id}}/readings"

    def sensor(self, sensor_id: int | str) -> str:
        return f"{self.prefix}/sensors/{sensor_id}/readings"

    @property
    def dead(self) -> str:
        return f"{self.prefix}/dead"

    def client_id(self, name: str) -> str:
        return f"{self.prefix.replace('/', '-')}-{name}"


@pytest.fixture
def topics() -> Topics:
    return Topics(f"sctest/{uuid.uuid4().hex[:12]}")


async def publish(url: str, items: list[tuple[str, bytes]], qos: int = 1) -> None:
    """A device: one connection, its messages in order, each acknowledged by the broker."""
    address = broker_address(url)
    async with aiomqtt.Client(address.host, address.port) as device:
        for topic, payload in items:
            await device.publish(topic, payload, qos=qos)


async def forget_session(url: str, client_id: str) -> None:
    """Drop a persistent session the bridge left on the shared broker."""
    address = broker_address(url)
    async with aiomqtt.Client(address.host, address.port, identifier=client_id, clean_session=True):
        pass


def free_port() -> int:
    # Bound, read back and closed at once: mosquitto binds it right after.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PrivateBroker:
    """A mosquitto of the test's own, to kill and restart."""

    port: int
    config: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def spawn(self) -> subprocess.Popen[bytes]:
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return self.process

    async def start(self) -> None:
        process = self.spawn()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if process.poll() is not None or loop.time() > deadline:
                    raise RuntimeError("private mosquitto did not start") from None
                await asyncio.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None


@pytest.fixture
def mosquitto_binary() -> str:
    if not Path(MOSQUITTO).exists():
        unavailable("no mosquitto binary to start a private broker")
    return MOSQUITTO


@pytest.fixture
async def private_broker(tmp_path: Path, mosquitto_binary: str) -> AsyncIterator[PrivateBroker]:
    config = tmp_path / "mosquitto.conf"
    for attempt in range(3):
        # A port picked free can be taken before mosquitto binds it: then pick another.
        port = free_port()
        config.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_inflight_messages 1000\nmax_queued_messages 100000\n"
        )
        broker = PrivateBroker(port, config)
        try:
            await broker.start()
            break
        except RuntimeError:
            broker.kill()
            if attempt == 2:
                raise
    try:
        yield broker
    finally:
        broker.kill()


@pytest.fixture
def mqtt_settings(topics: Topics) -> Iterator[dict[str, Any]]:
    return {
        "enabled": True,
        "client_id": topics.client_id("bridge"),
        "topics": [topics.pattern, f"{topics.prefix}/any"],
        "dead_letter_topic": topics.dead,
        "reconnect_max": 1,
    }
