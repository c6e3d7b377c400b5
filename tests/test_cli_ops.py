"""Operator-facing CLI: --help, check-config, stats, config discovery, and what a newcomer
tripped over (port changes, close reasons, readable errors)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from server import cli as cli_module
from server.admin_cli import explain
from tests.test_cli import (
    LINE_TIMEOUT,
    RUN_TIMEOUT,
    Server,
    assert_one_line_error,
    clean_env,
    cli,
    free_port,
    run,
    write_config,
)

SUBCOMMANDS = [
    ["serve"],
    ["migrate"],
    ["token"],
    ["user"],
    ["user", "add"],
    ["user", "list"],
    ["user", "remove"],
    ["publish"],
    ["tail"],
    ["stats"],
    ["check-config"],
    ["bench"],
]


@pytest.mark.parametrize("command", [[], *SUBCOMMANDS], ids=lambda c: " ".join(c) or "top")
def test_every_command_has_help(tmp_path: Path, command: list[str]) -> None:
    proc = run([*command, "--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout


def test_check_config_prints_effective_settings_with_secrets_masked(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {
            "auth": {
                "jwt_secret": "a-very-secret-value-that-must-not-print",
                "api_tokens": [{"name": "billing", "token": "tok-0123456789abcdef"}],
            },
            "database": {"url": "postgresql://app:hunter2@db:5432/sensorcast"},
            "metrics": {"token": "scrape-0123456789"},
        },
    )
    proc = run(
        ["--config", str(config), "check-config"],
        tmp_path,
        clean_env(SENSORCAST_SERVER_PORT="9123"),
    )
    assert proc.returncode == 0, proc.stderr
    for secret in ("a-very-secret", "tok-0123456789abcdef", "hunter2", "scrape-0123456789"):
        assert secret not in proc.stdout
    settings = yaml.safe_load(proc.stdout)
    assert settings["server"]["port"] == 9123  # the environment counts
    assert settings["auth"]["jwt_secret"] == "***"
    assert settings["auth"]["api_tokens"] == [
        {"name": "billing", "token": "***", "role": "service"}
    ]
    assert settings["database"]["url"] == "postgresql://app:***@db:5432/sensorcast"
    assert settings["config_dir"] == str(tmp_path)


def test_check_config_exits_2_on_a_typo_with_a_did_you_mean(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"server": {"prot": 9000}})
    proc = run(["--config", str(config), "check-config"], tmp_path)
    line = assert_one_line_error(proc, 2, "sensorcast: config error: ")
    assert line.endswith("server.prot: names no setting (did you mean port?)")
    nested = write_config(tmp_path, {"channels": {"namespaces": {"chat": {"presense": True}}}})
    proc = run(["--config", str(nested), "check-config"], tmp_path)
    assert "(did you mean presence?)" in assert_one_line_error(proc, 2, "sensorcast: ")
    proc = run(["check-config"], tmp_path, clean_env(SENSORCAST_SEVER_PORT="1"))
    assert "(did you mean server?)" in assert_one_line_error(proc, 2, "sensorcast: ")


def test_logging_level_in_any_case(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"logging": {"level": "warning"}})
    proc = run(["--config", str(config), "check-config"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["logging"]["level"] == "WARNING"


def test_config_found_through_the_environment_and_loudly_missing(tmp_path: Path) -> None:
    elsewhere = tmp_path / "etc"
    config = write_config(elsewhere, {"server": {"port": 9444}})
    cwd = tmp_path / "work"
    cwd.mkdir()
    proc = run(["check-config"], cwd, clean_env(SENSORCAST_CONFIG=str(config)))
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["server"]["port"] == 9444
    assert "no config file" not in proc.stderr

    bare = run(["token", "--role", "admin"], cwd)
    assert bare.returncode == 0
    assert "warning: no config file" in bare.stderr
    assert "$SENSORCAST_CONFIG" in bare.stderr
    assert "/etc/sensorcast/config.yaml" in bare.stderr
    assert bare.stdout.count(".") == 2  # still only the token on stdout


def test_config_discovery_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = write_config(tmp_path / "system", {})
    monkeypatch.setattr(cli_module, "SYSTEM_CONFIG", str(system))
    monkeypatch.chdir(tmp_path)
    assert cli_module.find_config(None, {}) == str(system)
    local = write_config(tmp_path, {})
    assert cli_module.find_config(None, {}) == "config.yaml" == local.name
    assert cli_module.find_config(None, {"SENSORCAST_CONFIG": "/x.yaml"}) == "/x.yaml"
    assert cli_module.find_config("/given.yaml", {"SENSORCAST_CONFIG": "/x.yaml"}) == "/given.yaml"


def test_user_add_errors_read_as_sentences_not_dicts(tmp_path: Path) -> None:
    config = str(write_config(tmp_path, {}))
    short = run(["--config", config, "user", "add", "bob", "--password", "short"], tmp_path)
    line = assert_one_line_error(short, 1, "sensorcast: ")
    assert "{" not in line, line
    assert "[" not in line, line
    assert "password: " in line


def test_explain_formats_details() -> None:
    assert explain("validation failed", {"password": ["Too short.", "Weak."]}) == (
        "validation failed: password: Too short.; Weak."
    )
    assert explain("not found", None) == "not found"


async def test_tail_publish_and_stats_follow_a_port_change_and_tail_says_why_it_closed(
    tmp_path: Path,
) -> None:
    """`SENSORCAST_SERVER_PORT=N make run`, then tail/publish/stats in another terminal
    (without that variable) reach port N."""
    server = Server(tmp_path)
    port = free_port()
    server.url = f"http://127.0.0.1:{port}"
    with server.stdout.open("wb") as out, server.stderr.open("wb") as err:
        server.proc = subprocess.Popen(  # noqa: ASYNC220 (starts it, does not wait)
            [sys.executable, "-m", "server", "--config", str(server.config), "serve"],
            cwd=server.dir,
            env=clean_env(SENSORCAST_SERVER_PORT=str(port)),
            stdout=out,
            stderr=err,
        )
    try:
        async with aiohttp.ClientSession() as session:
            await server.wait_healthy(session)
        tail = await cli(server, "tail", "general", url=False)
        assert tail.stdout is not None
        assert tail.stderr is not None
        ready = await asyncio.wait_for(tail.stderr.readline(), LINE_TIMEOUT * 4)
        assert ready.startswith(b"sensorcast: tailing general"), ready
        stats = await cli(server, "stats", url=False)
        out, err = await asyncio.wait_for(stats.communicate(), RUN_TIMEOUT)
        assert stats.returncode == 0, err
        assert yaml.safe_load(out)["connections"] == 1
        pub = await cli(server, "publish", "general", '{"x": 1}', url=False)
        out, err = await asyncio.wait_for(pub.communicate(), RUN_TIMEOUT)
        assert pub.returncode == 0, err
        line = await asyncio.wait_for(tail.stdout.readline(), LINE_TIMEOUT * 4)
        assert b'"data":{"x":1}' in line, line
        tail.kill()
        await tail.wait()

        # A channel the token may not read: tail prints the server's reason (the client's
        # subscribe is refused with an error frame).
        denied = await cli(server, "tail", "user:bob", url=False)
        _, err = await asyncio.wait_for(denied.communicate(), RUN_TIMEOUT)
        assert denied.returncode == 1
        assert err == b"sensorcast: forbidden: not allowed to subscribe to user:bob\n"
        # A socket the server closes: the reason and the code, not a bare code.
        refused = await cli(server, "tail", "general", "--token", "bogus", url=False)
        _, err = await asyncio.wait_for(refused.communicate(), RUN_TIMEOUT)
        assert refused.returncode == 1
        assert err.startswith(b"sensorcast: refused: invalid token"), err
        assert err.endswith(b"(4001)\n"), err
    finally:
        server.kill()
