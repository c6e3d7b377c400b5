"""The `ingest` phase: readings/s through `POST /api/v1/readings`, against the database's own
bulk-insert rate.

Per backend (SQLite, then PostgreSQL when it answers):

1. HTTP: a fresh Sensorcast (pinned like the other phases) with 100 sensors and 10 WS
   subscribers on `readings`; batches of 1,000 readings (2 metrics each, increasing
   timestamps) are POSTed for ~10 s, `concurrency` requests in flight so the server never
   waits on the client. readings/s = readings accepted (201) / time from the first request
   to the last 201. Every reading must reach every subscriber as one event: delivered /
   expected is counted, and `drain_s` says how long after the last 201 the last one came.
2. raw: the same rows (sensor_id, ts, metrics) inserted straight into a fresh
   database of the same kind, migrated by server.storage.migrate.apply so the schema and
   indexes are identical, from this process pinned to the server's core: asyncpg
   `copy_records_to_table`, aiosqlite `executemany` (the server's pragmas), each in one
   call / one transaction (`one_call`), and per 1,000-reading batch as the server does
   (`per_batch`, info). The HTTP figure is reported as a ratio to `one_call`: how close the
   HTTP, JSON, validation and fan-out layers come to the database's own limit.

A reading is one row (its metrics are one JSON object), so raw readings/s = raw rows/s.
The rows are prepared as the server's storage would bind them (SQLite: timestamp text and
JSON text; PostgreSQL: the server's own connection codecs) before the clock starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import loadgen as lg
import orjson
from procstat import CLK_TCK, cpu_seconds, cpu_split

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
SQLITE_URL = "sqlite:///var/bench-ingest.db"
BACKENDS = ("sqlite", "postgres")
LABELS = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
TARGETS = {"sqlite": 20_000.0, "postgres": 50_000.0}  # readings/s, not rows
READING_COLUMNS = ("sensor_id", "ts", "metrics")  # server/storage/readings.py
ROWS_PER_READING = 1
CHANNEL = "readings"
HOST = "127.0.0.1"
T0 = datetime(2024, 1, 1, tzinfo=UTC)
MS = timedelta(milliseconds=1)

# start(database_url, extra_config) -> a running server (run.py's `running`).
Starter = Callable[[str, str], AbstractAsyncContextManager[Any]]


@dataclass
class IngestParams:
    seconds: float = 10.0
    batch: int = 1000
    sensors: int = 100
    subscribers: int = 10
    concurrency: int = 4
    warmup_batches: int = 3
    # Deliveries still arriving this long after the last 201 count; later ones are lost.
    drain_seconds: float = 20.0
    # SO_RCVLOWAT on the subscribers while posting: ~15 events per read keeps the load
    # generator's core for the HTTP client (reset to 1 before counting the stragglers).
    batch_bytes: int = 4096


# data ---------------------------------------------------------------------------------
# The load generator shares its core with PostgreSQL: readings() is table-driven so that
# making a body costs ~1 us a reading instead of ~4.5 (datetime.isoformat per reading).
_MILLIS = [f".{ms:03d}Z" for ms in range(1000)]
_TEMPERATURES = [20.0 + i / 10 for i in range(200)]
_HUMIDITIES = [float(40 + i) for i in range(37)]


def readings(start: int, count: int, sensor_ids: list[int]) -> list[dict[str, Any]]:
    """Readings start..start+count: round-robin over the sensors, 1 ms apart, 2 metrics;
    timestamps `2024-01-01T00:00:05.123Z` (what iso() writes, as a browser would send)."""
    n = len(sensor_ids)
    out = []
    second, prefix = -1, ""
    for k in range(start, start + count):
        s, ms = divmod(k, 1000)
        if s != second:
            second = s
            prefix = (T0 + timedelta(seconds=s)).isoformat(timespec="seconds")[:19]
        out.append(
            {
                "sensor_id": sensor_ids[k % n],
                "timestamp": prefix + _MILLIS[ms],
                "values": {"temperature": _TEMPERATURES[k % 200], "humidity": _HUMIDITIES[k % 37]},
            }
        )
    return out


def rows(count: int, sensor_ids: list[int]) -> list[tuple[int, datetime, dict[str, float]]]:
    """The rows the server stores for readings 0..count (same generator)."""
    n = len(sensor_ids)
    out = []
    for k in range(count):
        values = {"temperature": 20.0 + (k % 200) / 10, "humidity": float(40 + k % 37)}
        out.append((sensor_ids[k % n], T0 + k * MS, values))
    return out


# HTTP ---------------------------------------------------------------------------------
async def http_run(server: Any, token: str, p: IngestParams) -> dict[str, Any]:
    base = f"http://{HOST}:{server.port}"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=p.concurrency + 1)
    async with aiohttp.ClientSession(base, headers=headers, connector=connector) as http:
        sensor_ids = []
        for i in range(p.sensors):
            body = {"type": "temperature", "model": "bench", "unit": "C", "name": f"s{i}"}
            async with http.post("/api/v1/sensors", data=orjson.dumps(body)) as resp:
                if resp.status != 201:
                    raise lg.BenchError(f"POST /api/v1/sensors: {resp.status} {await resp.text()}")
                doc = await resp.json()
                sensor_ids.append(int(doc.get("id") or doc["data"]["id"]))
        counters = lg.Counters()
        subs = await lg.open_subscribers(
            HOST, server.port, f"/api/v1/ws?channel={CHANNEL}", CHANNEL, p.subscribers,
            counters,
        )  # fmt: skip
        try:
            return await _post_window(http, server, sensor_ids, subs, counters, p)
        finally:
            await lg.close_all(subs)


async def _post_window(
    http: aiohttp.ClientSession,
    server: Any,
    sensor_ids: list[int],
    subs: list[lg.Subscriber],
    counters: lg.Counters,
    p: IngestParams,
) -> dict[str, Any]:
    next_batch = 0
    failures: list[str] = []

    async def post(index: int) -> int:
        body = orjson.dumps(readings(index * p.batch, p.batch, sensor_ids))
        async with http.post("/api/v1/readings", data=body) as resp:
            text = await resp.read()
            if resp.status != 201:
                failures.append(f"{resp.status} {text[:200]!r}")
                return 0
            return int(orjson.loads(text)["accepted"])

    # Warm-up: first-request caches, prepared statements, the WAL file.
    for _ in range(p.warmup_batches):
        await post(next_batch)
        next_batch += 1
    warm = p.warmup_batches * p.batch * p.subscribers
    await lg.wait_for_count(counters, warm, 10.0)
    await lg.wait_quiet(counters)
    warm_delivered = counters.frames
    counters.frames = 0

    lg.set_rcvlowat(subs, p.batch_bytes)
    accepted = 0
    deadline = 0.0
    last_201 = 0.0

    async def worker() -> None:
        nonlocal next_batch, accepted, last_201
        while time.monotonic() < deadline and not failures:
            index = next_batch
            next_batch += 1
            stored = await post(index)  # not `accepted += await ...`: that reads first
            accepted += stored
            last_201 = time.monotonic()

    cpu0 = cpu_split(server.pid)
    me0 = cpu_seconds("self")
    t0 = time.monotonic()
    deadline = t0 + p.seconds
    await asyncio.gather(*(worker() for _ in range(p.concurrency)))
    elapsed = last_201 - t0
    cpu1 = cpu_split(server.pid)
    me1 = cpu_seconds("self")
    lg.set_rcvlowat(subs, 1)
    expected = accepted * p.subscribers
    await lg.wait_for_count(counters, expected, p.drain_seconds)
    drain = time.monotonic() - last_201
    delivered = counters.frames
    await lg.wait_quiet(counters, quiet=0.3, within=2.0)
    server_cpu = (sum(cpu1) - sum(cpu0)) / CLK_TCK
    per_s = accepted / elapsed if elapsed > 0 else 0.0
    return {
        "batches": next_batch - p.warmup_batches,
        "readings": accepted,
        "rows": accepted * ROWS_PER_READING,
        "seconds": round(elapsed, 3),
        "readings_per_s": round(per_s, 1),
        "readings_per_s_delivered": round(accepted / (elapsed + drain), 1) if accepted else 0.0,
        "delivered": delivered,
        "expected": expected,
        "extra_frames": counters.frames - delivered,
        "warmup_delivered": warm_delivered,
        "warmup_expected": warm,
        "drain_s": round(drain, 3),
        "server_cpu_s": round(server_cpu, 3),
        "server_busy": round(server_cpu / elapsed, 3) if elapsed > 0 else None,
        "server_sys_share": round((cpu1[1] - cpu0[1]) / max(1, sum(cpu1) - sum(cpu0)), 3),
        "server_cpu_us_per_reading": round(server_cpu / accepted * 1e6, 2) if accepted else None,
        "loadgen_busy": round((me1 - me0) / elapsed, 3) if elapsed > 0 else None,
        "close_codes": dict(counters.close_codes),
        "failures": failures[:5],
        "total_readings_stored": (p.warmup_batches * p.batch) + accepted,
    }


# raw baselines ------------------------------------------------------------------------
@contextlib.contextmanager
def pinned(core: int | None) -> Any:
    """Run this thread (and threads it starts, e.g. aiosqlite's) on the server's core."""
    if core is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


async def _migrated(url: str, base_dir: Path, sensors: int) -> list[int]:
    """Apply the project's migrations to a fresh database and create `sensors` sensors."""
    from server.storage import migrate, open_storage

    storage = await open_storage(url, base_dir=base_dir, pool_min=1, pool_max=1)
    try:
        await migrate.apply(storage)
        ids = []
        for i in range(sensors):
            ids.append(
                await storage.fetchval(
                    "INSERT INTO sensors (name, type, model, unit) VALUES (?, ?, ?, ?) "
                    "RETURNING id",
                    f"s{i}",
                    "temperature",
                    "bench",
                    "C",
                )
            )
        return [int(x) for x in ids]
    finally:
        await storage.close()


async def raw_sqlite(workdir: Path, count: int, p: IngestParams, core: int | None) -> dict:
    import aiosqlite

    from server.storage.sqlite import PRAGMAS
    from server.storage.sqlite_values import sql_rows

    names = ", ".join(READING_COLUMNS)
    marks = ", ".join("?" * len(READING_COLUMNS))
    sql = f"INSERT INTO readings ({names}) VALUES ({marks})"
    out: dict[str, Any] = {"rows": count * ROWS_PER_READING, "how": "aiosqlite executemany"}
    for mode in ("one_call", "per_batch"):
        path = workdir / f"raw-{mode}.db"
        ids = await _migrated(f"sqlite:///{path}", workdir, p.sensors)
        params = sql_rows(rows(count, ids))  # timestamp and JSON text, as the server binds
        step = p.batch * ROWS_PER_READING
        with pinned(core):
            db = await aiosqlite.connect(str(path), isolation_level=None)
        try:
            for pragma in PRAGMAS:
                await (await db.execute(pragma)).close()
            t0 = time.perf_counter()
            chunks = [params] if mode == "one_call" else [
                params[i : i + step] for i in range(0, len(params), step)
            ]  # fmt: skip
            for chunk in chunks:
                await db.execute("BEGIN")
                await (await db.executemany(sql, chunk)).close()
                await db.execute("COMMIT")
            elapsed = time.perf_counter() - t0
            stored = (await (await db.execute("SELECT count(*) FROM readings")).fetchone())[0]
        finally:
            await db.close()
        out[mode] = _rate(stored, elapsed)
    return out


async def raw_postgres(count: int, p: IngestParams, core: int | None) -> dict:
    import asyncpg

    from server.storage.postgres_session import init_connection

    how = "asyncpg copy_records_to_table"
    out: dict[str, Any] = {"rows": count * ROWS_PER_READING, "how": how}
    for mode in ("one_call", "per_batch"):
        async with pg_schema("bench_raw") as schema:
            ids = await _migrated(f"{PG_URL}?search_path={schema}", Path("."), p.sensors)
            records = rows(count, ids)
            step = p.batch * ROWS_PER_READING
            with pinned(core):
                conn = await asyncpg.connect(PG_URL, server_settings={"search_path": schema})
            await init_connection(conn)
            try:
                t0 = time.perf_counter()
                chunks = [records] if mode == "one_call" else [
                    records[i : i + step] for i in range(0, len(records), step)
                ]  # fmt: skip
                for chunk in chunks:
                    await conn.copy_records_to_table(
                        "readings", records=chunk, columns=READING_COLUMNS
                    )
                elapsed = time.perf_counter() - t0
                stored = await conn.fetchval("SELECT count(*) FROM readings")
            finally:
                await conn.close()
        out[mode] = _rate(stored, elapsed)
    return out


def _rate(stored: int, elapsed: float) -> dict[str, Any]:
    per_s = stored / elapsed if elapsed > 0 else 0.0
    return {
        "rows_stored": stored,
        "seconds": round(elapsed, 3),
        "rows_per_s": round(per_s, 1),
        "readings_per_s": round(per_s / ROWS_PER_READING, 1),
    }


@contextlib.asynccontextmanager
async def pg_schema(prefix: str) -> AsyncIterator[str]:
    """A fresh schema, dropped (with everything in it) afterwards."""
    import asyncpg

    name = f"{prefix}_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(PG_URL, timeout=5)
    try:
        await conn.execute(f'CREATE SCHEMA "{name}"')
        yield name
    finally:
        with contextlib.suppress(Exception):
            await conn.execute(f'DROP SCHEMA "{name}" CASCADE')
        await conn.close()


async def pg_unreachable() -> str | None:
    """Why PostgreSQL cannot be used, or None when it answers."""
    try:
        import asyncpg
    except ImportError as exc:
        return f"asyncpg not installed ({exc})"
    try:
        conn = await asyncpg.connect(PG_URL, timeout=3)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


# one backend --------------------------------------------------------------------------
async def measure_backend(
    backend: str, start: Starter, p: IngestParams, core: int | None
) -> dict[str, Any]:
    label = LABELS[backend]
    token = secrets.token_urlsafe(24)
    auth = f"auth: {{api_tokens: [{{name: bench, token: {token}, role: service}}]}}\n"
    result: dict[str, Any] = {"target_readings_per_s": TARGETS[backend]}
    async with contextlib.AsyncExitStack() as stack:
        if backend == "postgres":
            schema = await stack.enter_async_context(pg_schema("bench_ingest"))
            url = f"{PG_URL}?search_path={schema}"
        else:
            url = SQLITE_URL
        server = await stack.enter_async_context(start(url, auth))
        print(
            f"  [ingest] {label}: {p.sensors} sensors, {p.subscribers} subscribers on "
            f"`{CHANNEL}`, {p.batch}-reading batches x {p.concurrency} in flight for "
            f"{p.seconds:g} s (server pid {server.pid})",
            flush=True,
        )
        result["http"] = await http_run(server, token, p)
    h = result["http"]
    count = h["total_readings_stored"]
    workdir = Path(tempfile.mkdtemp(prefix="sensorcast-bench-raw-"))
    try:
        if backend == "postgres":
            result["raw"] = await raw_postgres(count, p, core)
        else:
            result["raw"] = await raw_sqlite(workdir, count, p, core)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    raw = result["raw"]["one_call"]["readings_per_s"]
    result["ratio_to_raw"] = round(h["readings_per_s"] / raw, 4) if raw else None
    result["ok"] = h["readings_per_s"] >= TARGETS[backend] and h["delivered"] == h["expected"]
    print(
        f"  [ingest] {label}: {h['readings_per_s']:,.0f} readings/s "
        f"({h['readings']:,} in {h['seconds']} s; server {h['server_busy']:.0%} busy, "
        f"{h['server_cpu_us_per_reading']} us/reading, loadgen {h['loadgen_busy']:.0%}); "
        f"delivered {h['delivered']:,}/{h['expected']:,} (drain {h['drain_s']} s); "
        f"raw {result['raw']['one_call']['rows_per_s']:,.0f} rows/s one call, "
        f"{result['raw']['per_batch']['rows_per_s']:,.0f} per batch; "
        f"ratio {result['ratio_to_raw']}",
        flush=True,
    )
    if h["failures"]:
        print(f"  [ingest] {label}: failed requests: {h['failures']}", flush=True)
    return result


async def measure(start: Starter, p: IngestParams, core: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {"params": asdict(p)}
    for backend in BACKENDS:
        if backend == "postgres" and (why := await pg_unreachable()):
            print(
                f"  [ingest] PostgreSQL skipped: {PG_URL} unreachable ({why})",
                flush=True,
            )
            out[backend] = {"skipped": why}
            continue
        try:
            out[backend] = await measure_backend(backend, start, p, core)
        except (lg.BenchError, OSError, TimeoutError, aiohttp.ClientError) as exc:
            print(f"  [ingest] {LABELS[backend]} failed: {type(exc).__name__}: {exc}", flush=True)
            out[backend] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


# report -------------------------------------------------------------------------------
def comparison_rows(result: dict[str, Any] | None, p: IngestParams) -> list[dict[str, Any]]:
    """Table rows: `sensorcast` = through HTTP, `reference` = the raw insert."""
    out: list[dict[str, Any]] = []
    if not isinstance(result, dict):
        return out
    for backend in BACKENDS:
        r = result.get(backend)
        if not isinstance(r, dict):
            continue
        label = LABELS[backend]
        target = TARGETS[backend]
        h, raw = r.get("http"), r.get("raw", {}).get("one_call")
        a = h["readings_per_s"] if h else None
        b = raw["readings_per_s"] if raw else None
        out.append(
            {
                "metric": f"ingest readings/s {label} ({p.batch:,}/batch; ref = raw insert)",
                "sensorcast": a,
                "reference": b,
                "ratio": a / b if a is not None and b else None,
                "target": f">= {target:,.0f}/s" if "skipped" not in r else "skipped",
                "ok": (a >= target) if a is not None else None,
            }
        )
        if h:
            d, e = h["delivered"], h["expected"]
            out.append(
                {
                    "metric": f"  delivered / expected events ({p.subscribers} subs)",
                    "sensorcast": float(d),
                    "reference": float(e),
                    "ratio": d / e if e else None,
                    "target": "all",
                    "ok": d == e,
                }
            )
    return out
