"""MQTT ingest phase: readings/s through the bridge, as a ratio to REST batch ingest.

A private mosquitto on a free port (its queues raised: the bridge acknowledges a QoS 1
message only once it is stored, so a broker with the default 20 in flight would hold it
to 20 per transaction), one Sensorcast with `mqtt.enabled` on SQLite, and devices that are
`mosquitto_pub -l` processes, one per device and topic, each sending its lines as
messages. Cases:
- single-reading messages from 100 devices at QoS 1 and at QoS 0;
- batch messages of 100 readings (10 devices);
- REST: `POST /api/v1/readings` batches of 1,000 (4 in flight) on the same server.
Each is timed from the first message to the last reading stored (the server's own
`stats.mqtt.readings`), with the server's CPU per reading; "lost" counts what was sent and
never stored. Target: >= 10,000 single-reading messages/s at QoS 1, none lost.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from procstat import cpu_seconds, free_port

HOST = "127.0.0.1"
TARGET = 10_000
DEVICES = 100
# Messages per device in the single-reading cases, and batch messages in all.
PER_DEVICE = 1_000
BATCH_DEVICES = 10
BATCH_MESSAGES = 50
BATCH_SIZE = 100
REST_BATCH = 1_000
REST_BATCHES = 100
TOPIC = "bench/sensors/{sensor_id}/readings"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PUB = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"


class Broker:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        conf = workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} {HOST}\nallow_anonymous true\npersistence false\n"
            "max_inflight_messages 0\nmax_queued_messages 0\n"
        )
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    async def ready(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection((HOST, self.port), timeout=0.5).close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise OSError("private mosquitto did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _missing_tools() -> str | None:
    return next((b for b in (MOSQUITTO, MOSQUITTO_PUB) if not Path(b).exists()), None)


def extra_config(port: int, token: str) -> str:
    return (
        f"auth: {{api_tokens: [{{name: bench, token: {token}, role: service}}]}}\n"
        f"mqtt: {{enabled: true, url: 'mqtt://{HOST}:{port}', client_id: bench-{port}, "
        f"topics: ['{TOPIC}'], max_batch: 2000}}\n"
    )


async def _stats(http: aiohttp.ClientSession) -> dict[str, Any]:
    async with http.get("/api/v1/stats") as resp:
        doc: dict[str, Any] = await resp.json()
        return doc


async def _stored(http: aiohttp.ClientSession) -> int:
    return int((await _stats(http))["mqtt"]["readings"])


async def _wait_stored(
    http: aiohttp.ClientSession, target: int, idle_limit: float = 10.0
) -> tuple[int, float]:
    """(readings stored, when the last of them was) once `target` are, or nothing moved
    for `idle_limit` s."""
    last, last_at = await _stored(http), time.monotonic()
    while last < target:
        await asyncio.sleep(0.02)
        now = await _stored(http)
        if now != last:
            last, last_at = now, time.monotonic()
        elif time.monotonic() - last_at > idle_limit:
            break
    return last, last_at


def _devices(
    broker_port: int, sensor_ids: list[int], lines_for: Any, qos: int
) -> list[subprocess.Popen[bytes]]:
    procs = []
    for sensor_id in sensor_ids:
        argv = [MOSQUITTO_PUB, "-h", HOST, "-p", str(broker_port), "-q", str(qos), "-M", "100"]
        argv += ["-t", TOPIC.format(sensor_id=sensor_id), "-l"]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stderr=subprocess.DEVNULL)
        procs.append(proc)
    for proc, sensor_id in zip(procs, sensor_ids, strict=True):
        assert proc.stdin is not None
        proc.stdin.write(lines_for(sensor_id))
        proc.stdin.close()
    return procs


async def _case(
    label: str,
    http: aiohttp.ClientSession,
    pid: int,
    broker_port: int,
    sensor_ids: list[int],
    lines_for: Any,
    readings: int,
    messages: int,
    qos: int,
) -> dict[str, Any]:
    before = await _stored(http)
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    procs = _devices(broker_port, sensor_ids, lines_for, qos)
    stored, t1 = await _wait_stored(http, before + readings)
    cpu1 = cpu_seconds(pid)
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    got = stored - before
    seconds = max(t1 - t0, 1e-6)
    out = {
        "messages": messages,
        "readings_sent": readings,
        "readings_stored": got,
        "lost": readings - got,
        "seconds": round(seconds, 3),
        "readings_per_s": round(got / seconds),
        "messages_per_s": round(got / seconds * messages / readings),
        "server_cpu_us_per_reading": round((cpu1 - cpu0) / max(got, 1) * 1e6, 2),
    }
    print(
        f"  [mqtt] {label}: {out['readings_per_s']:,} readings/s "
        f"({out['messages_per_s']:,} messages/s), {out['server_cpu_us_per_reading']} us/reading, "
        f"lost {out['lost']}",
        flush=True,
    )
    return out


async def _rest(http: aiohttp.ClientSession, pid: int, sensor_ids: list[int]) -> dict[str, Any]:
    bodies = [
        orjson.dumps(
            [
                {"sensor_id": sensor_ids[i % len(sensor_ids)], "values": {"t": float(i % 50)}}
                for i in range(REST_BATCH)
            ]
        )
        for _ in range(4)
    ]
    queue = list(range(REST_BATCHES))

    async def poster(body: bytes) -> None:
        while queue:
            queue.pop()
            async with http.post("/api/v1/readings", data=body) as resp:
                if resp.status != 201:
                    raise OSError(f"POST /api/v1/readings: {resp.status} {await resp.text()}")

    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    await asyncio.gather(*(poster(b) for b in bodies))
    seconds, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
    count = REST_BATCH * REST_BATCHES
    out = {
        "readings": count,
        "seconds": round(seconds, 3),
        "readings_per_s": round(count / seconds),
        "server_cpu_us_per_reading": round(cpu / count * 1e6, 2),
    }
    print(
        f"  [mqtt] REST reference: {out['readings_per_s']:,} readings/s, "
        f"{out['server_cpu_us_per_reading']} us/reading",
        flush=True,
    )
    return out


async def measure(running: Any, core: int | None) -> dict[str, Any]:
    """`running(name, core, database_url, extra_config)`: run.py's server starter."""
    if missing := _missing_tools():
        print(f"  [mqtt] skipped: {missing} not installed", flush=True)
        return {"skipped": f"{missing} not installed"}
    workdir = Path(tempfile.mkdtemp(prefix="sensorcast-bench-mqtt-"))
    broker = Broker(workdir)
    token = secrets.token_urlsafe(24)
    try:
        await broker.ready()
        db = f"sqlite:///{workdir}/mqtt.db"
        async with running("sensorcast", core, db, extra_config(broker.port, token)) as server:
            base = f"http://{HOST}:{server.port}"
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            async with aiohttp.ClientSession(base, headers=headers) as http:
                return await _run_cases(http, server.pid, broker.port)
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


async def _run_cases(http: aiohttp.ClientSession, pid: int, broker_port: int) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while (await _stats(http)).get("mqtt", {}).get("state") != "connected":
        if time.monotonic() > deadline:
            raise OSError("the bridge did not connect to the private broker")
        await asyncio.sleep(0.05)
    sensor_ids = []
    for i in range(DEVICES):
        body = orjson.dumps({"type": "temperature", "unit": "C", "name": f"dev{i}"})
        async with http.post("/api/v1/sensors", data=body) as resp:
            sensor_ids.append(int((await resp.json())["id"]))

    def single(sensor_id: int) -> bytes:
        return b"".join(b'{"t": %d.5}\n' % (n % 40) for n in range(PER_DEVICE))

    def batch(sensor_id: int) -> bytes:
        line = orjson.dumps([{"t": float(n % 40)} for n in range(BATCH_SIZE)]) + b"\n"
        return line * BATCH_MESSAGES

    singles = DEVICES * PER_DEVICE
    out: dict[str, Any] = {"target_messages_per_s": TARGET}
    out["rest"] = await _rest(http, pid, sensor_ids)
    out["qos1"] = await _case(
        "single readings, QoS 1", http, pid, broker_port, sensor_ids, single, singles, singles, 1
    )
    out["qos0"] = await _case(
        "single readings, QoS 0", http, pid, broker_port, sensor_ids, single, singles, singles, 0
    )
    batches = BATCH_DEVICES * BATCH_MESSAGES
    out["batch"] = await _case(
        f"batches of {BATCH_SIZE}, QoS 1",
        http,
        pid,
        broker_port,
        sensor_ids[:BATCH_DEVICES],
        batch,
        batches * BATCH_SIZE,
        batches,
        1,
    )
    rest = out["rest"]["readings_per_s"]
    for case in ("qos1", "qos0", "batch"):
        out[case]["ratio_to_rest"] = round(out[case]["readings_per_s"] / rest, 3) if rest else None
    q1 = out["qos1"]
    out["ok"] = q1["messages_per_s"] >= TARGET and q1["lost"] == 0
    return out


def comparison_rows(result: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Table rows: each case against REST batch ingest on the same server."""
    if not isinstance(result, dict) or "rest" not in result:
        return []
    rest = result["rest"]["readings_per_s"]
    rows = []
    for case, label, target in (
        ("qos1", "MQTT single-reading msgs QoS 1 (ref = REST batches)", f">= {TARGET:,}/s"),
        ("qos0", "MQTT single-reading msgs QoS 0 (ref = REST batches)", ""),
        ("batch", f"MQTT {BATCH_SIZE}-reading msgs QoS 1 (ref = REST batches)", ""),
    ):
        r = result[case]
        rows.append(
            {
                "metric": f"{label} readings/s",
                "sensorcast": float(r["readings_per_s"]),
                "reference": float(rest),
                "ratio": r["ratio_to_rest"],
                "target": target,
                "ok": (r["messages_per_s"] >= TARGET and r["lost"] == 0)
                if case == "qos1"
                else r["lost"] == 0,
            }
        )
    return rows
