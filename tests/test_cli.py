"""The real console script (`python -m server`) in subprocesses: exit codes, output, serve."""

import asyncio
import contextlib
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import yaml

from server import codec
from tests.conftest import eventually

RUN_TIMEOUT = 20.0
START_TIMEOUT = 15.0
# serve's start-up log line names the port it bound (the real one when asked for 0).
RUNNING_ON = re.compile(r"listening on (http://127\.0\.0\.1:[1-9]\d*)")
LINE_TIMEOUT = 5.0
SHUTDOWN_TIMEOUT = 3


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without SENSORCAST_*, plus what a test sets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENSORCAST_")}
    env.update(extra)
    return env


def write_config(directory: Path, data: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        cwd=cwd,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def free_port() -> int:
    """A port free a moment ago. Only for a test that must name the port before the server
    starts (SENSORCAST_SERVER_PORT in tests/test_cli_ops.py); it can race with anything else
    picking a port, so servers here bind port 0 and read it back instead (Server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, prefix: str) -> str:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(prefix), lines[0]
    assert proc.stdout == ""
    return lines[0]


# -- bad config -------------------------------------------------------------------------------


def test_unknown_key_in_file_exits_2_with_one_line(tmp_path: Path):
    config = write_config(tmp_path, {"ws": {"max_queue_byte": 1}})

    proc = run(["--config", str(config), "serve"], cwd=tmp_path)

    line = assert_one_line_error(proc, 2, "sensorcast: config error:")
    assert "ws.max_queue_byte" in line


def test_bad_env_value_exits_2_with_one_line(tmp_path: Path):
    config = write_config(tmp_path, {})

    proc = run(
        ["--config", str(config), "token", "--role", "admin"],
        cwd=tmp_path,
        env=clean_env(SENSORCAST_WS_RATE_LIMIT="abc"),
    )

    line = assert_one_line_error(proc, 2, "sensorcast: config error:")
    assert "ws.rate_limit" in line


def test_config_yaml_in_working_directory_is_the_default(tmp_path: Path):
    write_config(tmp_path, {"ws": {"max_queue_byte": 1}})

    proc = run(["token", "--role", "admin"], cwd=tmp_path)

    assert proc.returncode == 2
    assert "ws.max_queue_byte" in proc.stderr


def test_missing_public_key_file_is_one_line_naming_the_key(tmp_path: Path):
    config = write_config(
        tmp_path, {"auth": {"jwt_algorithm": "RS256", "jwt_public_key": "/nonexistent/pub.pem"}}
    )

    proc = run(["--config", str(config), "token", "--role", "admin"], cwd=tmp_path)

    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "auth.jwt_public_key" in proc.stderr


def rsa_public_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem.decode()


def test_unparsable_public_key_is_one_line_naming_the_key(tmp_path: Path):
    (tmp_path / "pub.pem").write_text("-----BEGIN PUBLIC KEY-----\nnope\n", encoding="utf-8")
    config = write_config(
        tmp_path, {"auth": {"jwt_algorithm": "ES256", "jwt_public_key": "pub.pem"}}
    )

    proc = run(["--config", str(config), "token", "--role", "admin"], cwd=tmp_path)

    line = assert_one_line_error(proc, 2, "sensorcast: config error: auth.jwt_public_key:")
    assert "not a valid ES256 key" in line


def test_relative_public_key_path_resolves_against_config_directory(tmp_path: Path):
    conf_dir = tmp_path / "etc"
    (conf_dir / "keys").mkdir(parents=True)
    (conf_dir / "keys" / "pub.pem").write_text(rsa_public_pem(), encoding="utf-8")
    config = write_config(
        conf_dir, {"auth": {"jwt_algorithm": "RS256", "jwt_public_key": "keys/pub.pem"}}
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    proc = run(["--config", str(config), "token", "--role", "admin"], cwd=elsewhere)

    # The key file is found; minting is what fails (a public key cannot sign).
    line = assert_one_line_error(proc, 1, "sensorcast:")
    assert "cannot mint RS256 tokens" in line


# -- token ------------------------------------------------------------------------------------


def test_token_prints_only_a_jwt_signed_with_the_generated_secret(tmp_path: Path):
    conf_dir = tmp_path / "etc"
    config = write_config(conf_dir, {})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    before = int(time.time())
    proc = run(["--config", str(config), "token", "--role", "admin", "--sub", "ops"], cwd=elsewhere)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("\n")
    tok = proc.stdout.strip()
    assert proc.stdout == tok + "\n"
    assert len(tok.split(".")) == 3
    secret_file = conf_dir / "var" / "jwt_secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert not (elsewhere / "var").exists()
    secret = secret_file.read_text(encoding="utf-8").strip()
    claims = jwt.decode(tok, secret, algorithms=["HS256"])
    assert claims["sub"] == "ops"
    assert claims["role"] == "admin"
    assert before + 3600 <= claims["exp"] <= int(time.time()) + 3600

    again = run(["--config", str(config), "token", "--role", "user", "--ttl", "60"], cwd=elsewhere)

    assert again.returncode == 0, again.stderr
    assert secret_file.read_text(encoding="utf-8").strip() == secret
    claims = jwt.decode(again.stdout.strip(), secret, algorithms=["HS256"])
    assert claims["sub"] == "cli"
    assert claims["role"] == "user"
    assert claims["exp"] - claims["iat"] == 60


def test_token_uses_the_configured_secret(tmp_path: Path):
    config = write_config(tmp_path, {"auth": {"jwt_secret": "s" * 32}})

    proc = run(["--config", str(config), "token", "--role", "service"], cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    assert jwt.decode(proc.stdout.strip(), "s" * 32, algorithms=["HS256"])["role"] == "service"
    assert not (tmp_path / "var" / "jwt_secret").exists()


# -- migrate / serve refusing to start ---------------------------------------------------------


def test_migrate_dry_run_lists_pending_and_creates_nothing(tmp_path: Path):
    config = write_config(tmp_path, {})

    proc = run(["--config", str(config), "migrate", "--dry-run"], cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    pending = proc.stdout.splitlines()
    assert pending[0] == "pending 0001 sensors"
    assert all(line.startswith("pending ") for line in pending)
    # No database file, no var/: a dry run only reads.
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]

    applied = run(["--config", str(config), "migrate"], cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.splitlines() == [line.replace("pending", "applied") for line in pending]

    again = run(["--config", str(config), "migrate", "--dry-run"], cwd=tmp_path)
    assert again.stdout == "up to date\n"


def test_serve_with_unusable_database_path_exits_1_with_one_line(tmp_path: Path):
    (tmp_path / "afile").write_text("not a directory", encoding="utf-8")
    config = write_config(
        tmp_path,
        {
            "server": {"port": 0},  # never reached: the storage error comes first
            "database": {"url": "sqlite:///afile/db.sqlite"},
            # A configured secret: no "generated a JWT secret" log line before the failure.
            "auth": {"jwt_secret": "s" * 32},
        },
    )

    proc = run(["--config", str(config), "serve"], cwd=tmp_path)

    line = assert_one_line_error(proc, 1, "sensorcast: ")
    assert str(tmp_path / "afile") in line


# -- serve end to end ---------------------------------------------------------------------------


class Server:
    """`python -m server serve` as a child process, its output in files under tmp_path."""

    def __init__(self, tmp_path: Path, extra: dict[str, Any] | None = None) -> None:
        # Port 0: the kernel picks a free one as the server binds, and the test reads it
        # back from the "Running on" line. A port found free first and bound later races
        # with everything else on the machine.
        self.url = ""
        data: dict[str, Any] = {"server": {"port": 0, "shutdown_timeout": SHUTDOWN_TIMEOUT}}
        for section, values in (extra or {}).items():
            data.setdefault(section, {}).update(values)
        self.dir = tmp_path
        self.data = data
        self.config = write_config(tmp_path, data)
        self.stdout = tmp_path / "server.out"
        self.stderr = tmp_path / "server.err"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.url:
            # A restart serves on the port the first start was given, where its clients
            # reconnect; it was this test's own server a moment ago.
            self.data["server"]["port"] = int(self.url.rsplit(":", 1)[1])
            self.config = write_config(self.dir, self.data)
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server", "--config", str(self.config), "serve"],
                cwd=self.dir,
                env=clean_env(),
                stdout=out,
                stderr=err,
            )

    def log(self) -> str:
        return self.stderr.read_text(encoding="utf-8", errors="replace")

    async def wait_healthy(self, session: aiohttp.ClientSession) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log()}")
            if not self.url:
                bound = RUNNING_ON.search(self.log())
                if bound is None:
                    await asyncio.sleep(0.05)
                    continue
                self.url = bound.group(1)
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(
                    f"{self.url}/health", timeout=aiohttp.ClientTimeout(total=1)
                ) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)
        raise AssertionError(f"server not healthy within {START_TIMEOUT}s:\n{self.log()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path)
    try:
        yield srv
    finally:
        srv.kill()


async def cli(server: Server, *args: str, url: bool = True) -> asyncio.subprocess.Process:
    """`sensorcast --config ... ARGS [--url server.url]`; url=False: as a user types it."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        "--config",
        str(server.config),
        *args,
        *(("--url", server.url) if url else ()),
        cwd=server.dir,
        env=clean_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def read_frame(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), LINE_TIMEOUT)
    assert line, "tail ended its output"
    frame = codec.loads(line)
    assert isinstance(frame, dict)
    return frame


async def read_err(proc: asyncio.subprocess.Process, timeout: float = LINE_TIMEOUT) -> bytes:
    assert proc.stderr is not None
    line = await asyncio.wait_for(proc.stderr.readline(), timeout)
    assert line, "tail ended its stderr"
    return line


async def read_err_until(proc: asyncio.subprocess.Process, wanted: bytes) -> None:
    """Skip stderr lines (more reconnect attempts) until one holds `wanted`."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        # A backoff delay may reach 8 s by the fifth attempt: wait longer than for a line.
        if wanted in await read_err(proc, RUN_TIMEOUT):
            return
    raise AssertionError(f"no {wanted!r} on stderr")


@pytest.fixture
def sigint_reaches_children() -> Iterator[None]:
    """SIGINT (Ctrl-C) handled here, so the children this test sends it to handle it too.

    A shell without job control starts a background job (`make test &` in a script, a CI
    step) with SIGINT ignored, and an ignored signal stays ignored across fork and exec:
    `sensorcast tail` would then never see the test's SIGINT and run until killed. A
    handled one is reset to its default at exec, where Python turns it into
    KeyboardInterrupt and asyncio.run into the client's clean close.
    """
    before = signal.getsignal(signal.SIGINT)
    if before == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.usefixtures("sigint_reaches_children")
async def test_serve_publish_tail_and_sigterm_end_to_end(server: Server):
    children: list[asyncio.subprocess.Process] = []
    server.start()
    try:
        async with aiohttp.ClientSession() as session:
            await server.wait_healthy(session)
            ws = await session.ws_connect(f"{server.url}/api/v1/ws?channel=general")
            assert codec.loads((await ws.receive(timeout=LINE_TIMEOUT)).data)["type"] == (
                "connection"
            )
            assert codec.loads((await ws.receive(timeout=LINE_TIMEOUT)).data)["type"] == (
                "subscribed"
            )

            tail = await cli(server, "tail", "general")
            children.append(tail)
            # tail says on stderr once it is subscribed: stdout holds only the channel's frames.
            assert b"tailing general after offset 0" in await read_err(tail)
            position = await (
                await session.get(f"{server.url}/api/v1/stats/channels/general")
            ).json()

            pub = await cli(server, "publish", "general", '{"hello":1}')
            children.append(pub)
            out, err = await asyncio.wait_for(pub.communicate(), RUN_TIMEOUT)
            assert pub.returncode == 0, err
            receipt = codec.loads(out)
            assert receipt == {"channel": "general", "offset": 1, "epoch": position["epoch"]}

            event = await read_frame(tail)
            assert event["type"] == "event"
            assert event["channel"] == "general"
            assert event["offset"] == 1
            assert event["epoch"] == receipt["epoch"]
            assert event["data"] == {"hello": 1}
            direct = codec.loads((await ws.receive(timeout=LINE_TIMEOUT)).data)
            assert direct == event

            assert server.proc is not None
            server.proc.send_signal(signal.SIGTERM)
            msg = await ws.receive(timeout=RUN_TIMEOUT)
            assert msg.type is aiohttp.WSMsgType.CLOSE, msg
            assert msg.data == 1001
            # A bound on a hang, not a speed check (tests/deploy/test_shutdown.py holds the
            # shutdown with requests in flight): both clients answer the 1001 at once.
            rc = await asyncio.to_thread(server.proc.wait, RUN_TIMEOUT)
            assert rc == 0, server.log()

            # The client reconnects by itself, and says so on stderr.
            assert b"disconnected (1001 server shutting down)" in await read_err(tail)
            assert b"reconnecting in" in await read_err(tail)
            # Back on a new local bus: tail reconnects and says the gap was not recovered.
            server.start()
            await read_err_until(tail, b"reconnected")
            await read_err_until(tail, b"general: events were missed and could not be recovered")
            tail.send_signal(signal.SIGINT)
            # A bound on a hang, not a speed check. 130: ended by SIGINT, as a shell expects.
            assert await asyncio.wait_for(tail.wait(), RUN_TIMEOUT) == 130
            assert "Traceback" not in server.log()
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()


# The server's log line for a socket's end (server/ws/endpoint.py _log_disconnect).
CLIENT_CLOSED_1000 = re.compile(r"disconnect \S+ code=1000 by=client")


async def test_tail_ends_on_sigterm_as_on_sigint_closing_with_1000(server: Server):
    server.start()
    async with aiohttp.ClientSession() as session:
        await server.wait_healthy(session)
    tail = await cli(server, "tail", "general")
    try:
        # Subscribed: the socket is open and tail handles its signals.
        assert b"tailing general after offset 0" in await read_err(tail)
        assert CLIENT_CLOSED_1000.search(server.log()) is None

        tail.send_signal(signal.SIGTERM)  # kill, timeout(1), systemd's stop
        # A bound on a hang, not a speed check. 143: ended by SIGTERM, as a shell expects.
        assert await asyncio.wait_for(tail.wait(), RUN_TIMEOUT) == 143
        assert tail.stderr is not None
        rest = await tail.stderr.read()
        assert rest == b"", rest  # no traceback, nothing at all
        # The server logs the close once its handler ends, which may be after tail exits.
        await eventually(lambda: CLIENT_CLOSED_1000.search(server.log()) is not None, RUN_TIMEOUT)
    finally:
        if tail.returncode is None:
            tail.kill()
            await tail.wait()


async def test_serve_does_not_log_query_tokens(server: Server):
    server.start()
    async with aiohttp.ClientSession() as session:
        await server.wait_healthy(session)
        # Minted once the server has written var/jwt_secret, so both use the same one.
        args = ["--config", str(server.config), "token", "--role", "user"]
        secret = (await asyncio.to_thread(run, args, server.dir)).stdout.strip()
        assert secret
        async with session.get(f"{server.url}/api/v1/stats?token={secret}") as resp:
            assert resp.status == 200
        ws = await session.ws_connect(f"{server.url}/api/v1/ws?token={secret}")
        await ws.close()
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(server.proc.wait, SHUTDOWN_TIMEOUT + 2) == 0

    log = server.log()
    assert "GET /api/v1/stats" in log
    assert secret not in log


# -- user add / list / remove ------------------------------------------------------------------


def run_input(args: list[str], cwd: Path, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        cwd=cwd,
        env=clean_env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def test_user_add_list_remove(tmp_path: Path):
    config = str(write_config(tmp_path, {}))

    added = run_input(
        ["--config", config, "user", "add", "alice", "--role", "admin", "--password-stdin"],
        tmp_path,
        "s3cret pass phrase\n",
    )
    assert added.returncode == 0, added.stderr
    assert added.stdout == "added user alice (id 1, role admin)\n"
    # Not a terminal and no flag: the password is read from stdin too.
    assert (
        run_input(["--config", config, "user", "add", "bob"], tmp_path, "bobs-password").returncode
        == 0
    )
    with_flag = run(
        ["--config", config, "user", "add", "carol", "--password", "carols-password"], tmp_path
    )
    assert with_flag.returncode == 0, with_flag.stderr

    listed = run(["--config", config, "user", "list"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split("\t") for line in listed.stdout.splitlines()]
    assert [r[:3] for r in rows] == [
        ["1", "alice", "admin"],
        ["2", "bob", "user"],
        ["3", "carol", "user"],
    ]
    assert "s3cret" not in listed.stdout

    removed = run(["--config", config, "user", "remove", "bob"], tmp_path)
    assert (removed.returncode, removed.stdout) == (0, "removed user bob (id 2)\n")
    assert "bob" not in run(["--config", config, "user", "list"], tmp_path).stdout


def test_user_errors_are_one_line_and_exit_1(tmp_path: Path):
    config = str(write_config(tmp_path, {}))
    assert (
        run(
            ["--config", config, "user", "add", "alice", "--password", "long-enough"], tmp_path
        ).returncode
        == 0
    )

    taken = run(["--config", config, "user", "add", "alice", "--password", "long-enough"], tmp_path)
    assert "already exists" in assert_one_line_error(taken, 1, "sensorcast: ")
    short = run(["--config", config, "user", "add", "bob", "--password", "short"], tmp_path)
    assert "password" in assert_one_line_error(short, 1, "sensorcast: ")
    missing = run(["--config", config, "user", "remove", "nobody"], tmp_path)
    assert "not found" in assert_one_line_error(missing, 1, "sensorcast: ")
    empty = run_input(["--config", config, "user", "add", "dave", "--password-stdin"], tmp_path, "")
    assert "password" in assert_one_line_error(empty, 1, "sensorcast: ")
