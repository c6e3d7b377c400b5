"""The MQTT bridge (SPEC §11): device readings from the user's broker, through the same
readings service as `POST /api/v1/readings`.

- Batching: while one batch is being stored, the messages that arrive queue up; the next
  batch is all of them (up to `mqtt.max_batch`), so a fleet sending one reading each costs
  one transaction per batch, not per reading, and a lone message is stored at once.
- Acknowledgement: at QoS 1/2 a message is acknowledged to the broker only once its batch
  is stored (and its events published), or once it is refused. The session is persistent
  (clean_session false, a stable client id), so what a crash or an outage leaves
  unacknowledged is redelivered: delivery is at least once, and a reading stored just
  before a crash may be stored again when the broker redelivers it.
- A bad message is refused alone (its neighbours in the batch are stored), counted,
  logged once per cause per minute, and republished to `mqtt.dead_letter_topic`.
- Broker lost: /health says `down` for MQTT; reconnect with capped, jittered backoff and
  resubscribe; the rest of the server is unaffected.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import orjson
from aiohttp import web

from server import codec
from server.config import MqttConfig
from server.errors import ValidationFailed
from server.ingest.messages import CAUSES, Refusal, parse_message
from server.keys import CONFIG, MQTT, SERVICES
from server.mqtt_topics import Pattern, broker_address, compile_pattern
from server.services.readings import Reading, ReadingService
from server.storage import StorageError

log = logging.getLogger(__name__)

FIRST_DELAY = 0.5
# Storage down: the batch is retried (not acknowledged) at most this far apart.
STORE_RETRY_MAX = 5.0
# A refusal cause is logged at most once per this many seconds.
LOG_EVERY = 60.0
# Messages held between the socket and the batcher at most (QoS 0 has no broker window).
MAX_QUEUED = 100_000
KEEPALIVE = 30


@dataclass(slots=True)
class BridgeStats:
    received: int = 0
    accepted: int = 0
    readings: int = 0
    rejected: int = 0
    batches: int = 0
    reconnects: int = 0
    by_cause: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CAUSES, 0))


class MqttBridge:
    def __init__(
        self,
        config: MqttConfig,
        readings: ReadingService,
        client_id: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.readings = readings
        self.client_id = client_id
        self.broker = broker_address(config.url)
        self.patterns: tuple[Pattern, ...] = tuple(compile_pattern(t) for t in config.topics)
        self.stats = BridgeStats()
        self.state = "starting"
        self.last_error: str | None = None
        self._clock = clock
        self._logged_at: dict[str, float] = {}
        self._unlogged: dict[str, int] = dict.fromkeys(CAUSES, 0)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._flushing = False
        self._storage_down = False

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="mqtt-bridge")

    async def stop(self, grace: float) -> None:
        """Let a batch being stored finish (so it is acknowledged), then disconnect."""
        task, self._stopping = self._task, True
        if task is None:
            return
        if not self._flushing:
            task.cancel()
        done, _ = await asyncio.wait({task}, timeout=grace)
        if not done:
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    def describe(self) -> dict[str, Any]:
        """The bridge's state for /health and stats."""
        s = self.stats
        return {
            "state": self.state,
            "broker": f"{self.broker.host}:{self.broker.port}",
            "client_id": self.client_id,
            "topics": [p.filter for p in self.patterns],
            "received": s.received,
            "accepted": s.accepted,
            "readings": s.readings,
            "rejected": s.rejected,
            "rejected_by_cause": dict(s.by_cause),
            "batches": s.batches,
            "reconnects": s.reconnects,
            "last_error": self.last_error,
        }

    # -- connection --------------------------------------------------------------------

    def _client(self) -> aiomqtt.Client:
        broker = self.broker
        client = aiomqtt.Client(
            broker.host,
            broker.port,
            username=self.config.username or broker.username,
            password=self.config.password or broker.password,
            identifier=self.client_id,
            # A persistent session: what is unacknowledged when we go is kept for us.
            clean_session=self.config.qos == 0,
            keepalive=KEEPALIVE,
            timeout=10,
            max_queued_incoming_messages=MAX_QUEUED,
            tls_context=ssl.create_default_context() if broker.tls else None,
        )
        # aiomqtt has no manual acknowledgement of its own yet (empicano/aiomqtt#345);
        # paho, under it, has: a message is acknowledged when we say so, not on receipt.
        client._client.manual_ack_set(True)
        return client

    async def _run(self) -> None:
        try:
            await self._connect_loop()
        finally:
            self.state = "stopped"

    async def _connect_loop(self) -> None:
        delay = FIRST_DELAY
        while not self._stopping:
            try:
                async with self._client() as client:
                    await client.subscribe([(p.filter, self.config.qos) for p in self.patterns])
                    if self.state != "connected":
                        log.info(
                            "mqtt: connected to %s:%d as %s, subscribed to %s",
                            self.broker.host,
                            self.broker.port,
                            self.client_id,
                            ", ".join(p.filter for p in self.patterns),
                        )
                    self.state, self.last_error, delay = "connected", None, FIRST_DELAY
                    await self._session(client)
            except aiomqtt.MqttError as exc:
                if self.state != "down":
                    # Once per outage, not once per attempt.
                    log.warning(
                        "mqtt: broker %s:%d unreachable (%s); retrying with backoff",
                        self.broker.host,
                        self.broker.port,
                        exc,
                    )
                self.state, self.last_error = "down", str(exc)
            except Exception as exc:
                # A bug must not end ingest for good: say it once with its traceback, go on.
                log.exception("mqtt: bridge failed; reconnecting")
                self.state, self.last_error = "down", repr(exc)
            if self._stopping:
                break
            self.stats.reconnects += 1
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.config.reconnect_max)

    async def _session(self, client: aiomqtt.Client) -> None:
        messages = client.messages
        async for first in messages:
            batch = [first]
            # Whatever queued while the last batch was stored joins this one.
            while len(batch) < self.config.max_batch and len(messages):
                batch.append(await anext(messages))
            self._flushing = True
            try:
                await self._flush(client, batch)
            finally:
                self._flushing = False
            if self._stopping:
                return

    # -- one batch ---------------------------------------------------------------------

    async def _flush(self, client: aiomqtt.Client, batch: list[aiomqtt.Message]) -> None:
        self.stats.received += len(batch)
        now = codec.utcnow()
        bodies: list[list[Reading]] = []
        parsed: list[aiomqtt.Message] = []
        refused: list[tuple[aiomqtt.Message, Refusal]] = []
        for message in batch:
            outcome = parse_message(message.topic.value, _payload(message), self.patterns, now)
            if isinstance(outcome, Refusal):
                refused.append((message, outcome))
            else:
                bodies.append(outcome)
                parsed.append(message)
        if bodies:
            answers = await self._store(bodies)
            if answers is None:
                return  # stopping with storage down: unacknowledged, so redelivered
            for message, body, errors in zip(parsed, bodies, answers, strict=True):
                if errors is None:
                    self.stats.accepted += 1
                    self.stats.readings += len(body)
                else:
                    refused.append((message, Refusal("unknown_sensor", errors)))
            self.stats.batches += 1
        for message, refusal in refused:
            await self._refuse(client, message, refusal)
        for message in batch:
            if message.qos > 0:
                client._client.ack(message.mid, message.qos)

    async def _store(self, bodies: list[list[Reading]]) -> list[dict[str, Any] | None] | None:
        """Each body's errors (None: stored); retried while the database is away."""
        delay = FIRST_DELAY
        while True:
            try:
                answers = await self.readings.ingest_each(bodies)
            except StorageError as exc:
                if not self._storage_down:
                    log.warning("mqtt: cannot store readings (%s); holding the batch", exc)
                    self._storage_down = True
                if self._stopping:
                    return None
                await asyncio.sleep(delay)
                delay = min(delay * 2, STORE_RETRY_MAX)
                continue
            except ValidationFailed as exc:
                # One body whose sensor went while it was stored.
                answers = [exc.details or {"_schema": [exc.message]}]
            if self._storage_down:
                log.info("mqtt: storing readings again")
                self._storage_down = False
            return answers

    async def _refuse(self, client: aiomqtt.Client, message: aiomqtt.Message, r: Refusal) -> None:
        topic = message.topic.value
        self.stats.rejected += 1
        self.stats.by_cause[r.cause] += 1
        self._log_refusal(topic, r)
        target = self.config.dead_letter_topic
        if not target:
            return
        letter = {
            "topic": topic,
            "cause": r.cause,
            "details": r.details,
            "payload": _payload(message).decode("utf-8", "replace"),
            "received_at": codec.isotime(),
        }
        try:
            await client.publish(target, orjson.dumps(letter), qos=self.config.qos)
        except aiomqtt.MqttError as exc:
            log.warning("mqtt: could not dead-letter a message from %s: %s", topic, exc)

    def _log_refusal(self, topic: str, r: Refusal) -> None:
        now = self._clock()
        last = self._logged_at.get(r.cause)
        if last is not None and now - last < LOG_EVERY:
            self._unlogged[r.cause] += 1
            return
        more, self._unlogged[r.cause] = self._unlogged[r.cause], 0
        self._logged_at[r.cause] = now
        log.warning(
            "mqtt: refused a message on %s (%s): %s%s",
            topic,
            r.cause,
            orjson.dumps(r.details).decode(),
            f"; {more} more refused for this cause since the last line" if more else "",
        )


def _payload(message: aiomqtt.Message) -> bytes:
    payload = message.payload
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    return b"" if payload is None else str(payload).encode()


def default_client_id(port: int) -> str:
    return f"sensorcast-{socket.gethostname()}-{port}"


async def mqtt_ctx(app: web.Application) -> AsyncIterator[None]:
    """Runs the bridge for the app's lifetime when mqtt.enabled (a cleanup_ctx)."""
    config = app[CONFIG]
    settings = config.mqtt
    bridge = MqttBridge(
        settings,
        app[SERVICES].readings,
        settings.client_id or default_client_id(config.server.port),
    )
    app[MQTT] = bridge
    reporters = app[SERVICES].reporters
    reporters["mqtt"] = bridge.describe
    bridge.start()
    yield
    await bridge.stop(config.server.shutdown_timeout)
    del reporters["mqtt"]
