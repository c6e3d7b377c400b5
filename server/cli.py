"""`sensorcast` / `python -m server`: serve, migrate, token, user, publish, tail, stats,
check-config, bench. Every command has --help."""

# The docstring above is `sensorcast --help`'s description. Here: the arguments, finding
# the config, the command table; serve is serve_cli.py, migrate, token and user
# admin_cli.py, and publish, tail and stats run client_cli.py.

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from server.admin_cli import migrate, token, user
from server.config import ENV_CONFIG, ROLES, Config, ConfigError, load_config
from server.serve_cli import Fatal, listening_url, serve

DEFAULT_CONFIG = "config.yaml"
SYSTEM_CONFIG = "/etc/sensorcast/config.yaml"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sensorcast", description=__doc__)
    p.add_argument(
        "--config",
        metavar="PATH",
        help=f"config file (default: ${ENV_CONFIG}, else ./{DEFAULT_CONFIG}, else "
        f"{SYSTEM_CONFIG}, else built-in defaults)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("serve", help="run the server")
    m = sub.add_parser("migrate", help="apply pending database migrations")
    m.add_argument("--dry-run", action="store_true", help="list pending migrations only")
    t = sub.add_parser("token", help="mint a JWT (prints only the token)")
    t.add_argument("--role", choices=ROLES, help="required, except with --user")
    who = t.add_mutually_exclusive_group()
    who.add_argument("--sub", help="subject, taken as it is (a service name), default: cli")
    who.add_argument(
        "--user",
        metavar="NAME",
        help="a login user's token: sub is its id (as its login token), role its role",
    )
    t.add_argument("--name", help="display name claim")
    t.add_argument("--ttl", type=float, default=3600, help="seconds until expiry (3600)")
    t.add_argument("--channels", help="comma-separated channel patterns the token is limited to")
    u = sub.add_parser("user", help="add, list or remove login users")
    users = u.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    add = users.add_parser("add", help="add a user (password from a prompt or stdin)")
    add.add_argument("name")
    add.add_argument("--role", default="user", choices=ROLES)
    given = add.add_mutually_exclusive_group()
    given.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin's first line"
    )
    given.add_argument(
        "--password", help="the password itself (visible to other local users: prefer stdin)"
    )
    users.add_parser("list", help="list users")
    rm = users.add_parser("remove", help="remove a user (its issued tokens live until expiry)")
    rm.add_argument("name")
    sub.add_parser(
        "check-config",
        help="check the config; print the effective settings, secrets masked (exit 0 or 2)",
    )
    for name, help_ in (
        ("publish", "publish an event"),
        ("tail", "print live events"),
        ("stats", "this instance's /api/v1/stats, readable"),
    ):
        c = sub.add_parser(name, help=help_)
        c.add_argument("--url", help="server URL (default: from the config's host and port)")
        c.add_argument("--token", help="token to use (default: one minted from the local secret)")
        if name == "publish":
            c.add_argument("channel")
            c.add_argument("json", help="the event, as a JSON object")
        elif name == "tail":
            c.add_argument("channels", nargs="+", metavar="CHANNEL")
    # Its own flags (--quick, --only ...) pass through to bench/run.py: see main().
    sub.add_parser(
        "bench", help="benchmark fan-out, latency and memory (bench/README.md)", add_help=False
    )
    return p


def find_config(given: str | None, environ: dict[str, str] | None = None) -> str | None:
    """The config file, found the way services look: --config, $SENSORCAST_CONFIG,
    ./config.yaml, /etc/sensorcast/config.yaml; None when there is none."""
    import os

    env = os.environ if environ is None else environ
    if given:
        return given
    if env.get(ENV_CONFIG):
        return env[ENV_CONFIG]
    for candidate in (DEFAULT_CONFIG, SYSTEM_CONFIG):
        if Path(candidate).is_file():
            return candidate
    return None


def _load(path: str | None) -> Config:
    found = find_config(path)
    if found is None:
        # Loud: built-in defaults mean a new var/ (database, JWT secret) in this directory,
        # so tokens minted here fail on a server that has its own.
        print(
            f"sensorcast: warning: no config file (--config, ${ENV_CONFIG}, ./{DEFAULT_CONFIG}, "
            f"{SYSTEM_CONFIG}); using built-in defaults with data in {Path.cwd() / 'var'}",
            file=sys.stderr,
        )
    return load_config(found)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":
        args.bench_args = [a for a in extra if a != "--"]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        config = _load(args.config)
    except ConfigError as exc:
        print(f"sensorcast: config error: {exc}", file=sys.stderr)
        return 2
    try:
        return int(COMMANDS[args.command](config, args) or 0)
    except ConfigError as exc:
        print(f"sensorcast: config error: {exc}", file=sys.stderr)
        return 2
    except Fatal as exc:
        print(f"sensorcast: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _client_setup(config: Config, args: argparse.Namespace) -> tuple[str, str]:
    from server.auth import Authenticator

    host = config.server.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    url = args.url or listening_url(config) or f"http://{host}:{config.server.port}"
    url = url.rstrip("/")
    tok = args.token or Authenticator(config.auth, config.var_dir, config.base_dir).mint(
        "cli", "service", 3600
    )
    return url, tok


def publish(config: Config, args: argparse.Namespace) -> int:
    from server.client_cli import publish_once

    url, tok = _client_setup(config, args)
    return asyncio.run(publish_once(url, tok, args.channel, args.json))


def tail(config: Config, args: argparse.Namespace) -> int:
    from server.client_cli import tail_channels

    url, tok = _client_setup(config, args)
    return asyncio.run(tail_channels(url, tok, args.channels))


def stats(config: Config, args: argparse.Namespace) -> int:
    from server.client_cli import fetch_stats

    url, tok = _client_setup(config, args)
    return asyncio.run(fetch_stats(url, tok))


def check_config(config: Config, args: argparse.Namespace) -> int:
    """Reaching here means the config loaded and passed every check."""
    import yaml

    from server.config import effective_settings

    print(yaml.safe_dump(effective_settings(config), sort_keys=False), end="")
    print("config ok", file=sys.stderr)
    return 0


def bench(config: Config, args: argparse.Namespace) -> int:
    from server.bench_cli import run_bench

    return run_bench(args.bench_args, args.config)


COMMANDS: dict[str, Any] = {
    "serve": serve,
    "migrate": migrate,
    "token": token,
    "user": user,
    "publish": publish,
    "tail": tail,
    "stats": stats,
    "check-config": check_config,
    "bench": bench,
}
