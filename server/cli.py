"""`sensorcast` / `python -m server`: serve, migrate, token, user, publish, tail, stats,
check-config, bench. Every command has --help."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from pathlib import Path
from typing import Any

from server.config import ENV_CONFIG, ROLES, Config, ConfigError, load_config

DEFAULT_CONFIG = "config.yaml"
SYSTEM_CONFIG = "/etc/sensorcast/config.yaml"
# Where `serve` writes the URL it listens on, under var/: tail, publish and stats read it, so
# `SENSORCAST_SERVER_PORT=18500 make run` and a `sensorcast tail` beside it agree.
LISTENING_FILE = "listening"


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
    except _Fatal as exc:
        print(f"sensorcast: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


class _Fatal(Exception):
    """A start-up problem the operator must fix; printed as one line, no traceback."""


def serve(config: Config, args: argparse.Namespace) -> int:
    import logging

    import uvloop
    from aiohttp import web

    from server.app import create_app
    from server.jobs import connections_status
    from server.logs import RedactingAccessLogger, setup_logging
    from server.notify import Notifier
    from server.storage import StorageError

    setup_logging(config.logging)
    notifier = Notifier.from_environ()
    where = f"http://{config.server.host}:{config.server.port}"
    wrote: list[bool] = []

    def listening(banner: str) -> None:
        # run_app calls this once every site accepts: the moment systemd may route traffic.
        # Instead of aiohttp's plain banner, one log line in the configured format. The
        # banner names the bound address: the port the kernel gave when the config says 0.
        nonlocal where
        bound = re.search(r"http://\S+:(\d+)", banner)
        if config.server.port == 0 and bound is not None:
            where = f"http://{config.server.host}:{bound.group(1)}"
        logging.getLogger("server").info("listening on %s", where, extra={"event": "listening"})
        notifier.ready(f"listening on {where}, {connections_status(0)}")
        wrote.append(_write_listening(config, where))

    try:
        web.run_app(
            create_app(config, notifier),
            host=config.server.host,
            port=config.server.port,
            shutdown_timeout=config.server.shutdown_timeout,
            loop=uvloop.new_event_loop(),
            access_log_class=RedactingAccessLogger,
            print=listening,
        )
    except StorageError as exc:
        raise _Fatal(str(exc)) from None
    except OSError as exc:
        raise _Fatal(f"cannot serve on {config.server.host}:{config.server.port}: {exc}") from None
    finally:
        if any(wrote):
            (config.var_dir / LISTENING_FILE).unlink(missing_ok=True)
    return 0


def _write_listening(config: Config, url: str) -> bool:
    try:
        config.var_dir.mkdir(parents=True, exist_ok=True)
        (config.var_dir / LISTENING_FILE).write_text(url + "\n")
        return True
    except OSError:
        return False  # read-only (systemd's ProtectSystem): tail uses the config's port


def migrate(config: Config, args: argparse.Namespace) -> int:
    from server.storage import StorageError, open_storage
    from server.storage.migrate import MIGRATIONS_DIR, apply, pending

    async def run() -> int:
        db = config.database
        storage = await open_storage(
            db.url,
            base_dir=config.base_dir,
            pool_min=db.pool_min,
            pool_max=db.pool_max,
            # A dry run creates nothing: no database file, no schema_migrations.
            readonly=args.dry_run,
        )
        try:
            verb, run = ("pending", pending) if args.dry_run else ("applied", apply)
            migrations = await run(storage, MIGRATIONS_DIR)
            for m in migrations:
                print(f"{verb} {m.version:04d} {m.name}")
            if not migrations:
                print("up to date")
            return 0
        finally:
            await storage.close()

    try:
        return asyncio.run(run())
    except StorageError as exc:
        raise _Fatal(str(exc)) from None


def token(config: Config, args: argparse.Namespace) -> int:
    from server.auth import Authenticator

    channels = [c.strip() for c in args.channels.split(",")] if args.channels else None
    auth = Authenticator(config.auth, config.var_dir, config.base_dir)
    sub, role, name = args.sub or "cli", args.role, args.name
    if args.user is not None:
        # The same user:{id} as that user's login token: one person, one identity.
        found = _login_user(config, args.user)
        sub, role, name = str(found["id"]), role or found["role"], name or found["username"]
    elif role is None:
        raise _Fatal("token: --role is required (or --user NAME for a login user's token)")
    try:
        print(auth.mint(sub, role, args.ttl, name=name, channels=channels))
    except RuntimeError as exc:
        raise _Fatal(str(exc)) from None
    return 0


def _login_user(config: Config, username: str) -> dict[str, Any]:
    from server.errors import ApiError
    from server.services.users import UsersService
    from server.storage import StorageError, open_storage

    async def run() -> dict[str, Any]:
        db = config.database
        storage = await open_storage(db.url, base_dir=config.base_dir, pool_min=1, pool_max=1)
        try:
            return await UsersService(storage).get(username)
        finally:
            await storage.close()

    try:
        return asyncio.run(run())
    except ApiError as exc:
        raise _Fatal(exc.message) from None
    except StorageError as exc:
        raise _Fatal(str(exc)) from None


def _read_password(args: argparse.Namespace) -> str:
    if args.password is not None:
        return str(args.password)
    if args.password_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    import getpass

    password = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != password:
        raise _Fatal("the passwords differ")
    return password


def user(config: Config, args: argparse.Namespace) -> int:
    from server.errors import ApiError
    from server.services.users import UsersService
    from server.storage import StorageError, open_storage
    from server.storage.migrate import MIGRATIONS_DIR, ensure_current

    # Read before the database is opened: a prompt must not hold a connection.
    password = _read_password(args) if args.user_command == "add" else ""

    async def run() -> None:
        db = config.database
        storage = await open_storage(db.url, base_dir=config.base_dir, pool_min=1, pool_max=1)
        try:
            await ensure_current(storage, MIGRATIONS_DIR, db.auto_migrate)
            users = UsersService(storage)
            if args.user_command == "add":
                added = await users.add(args.name, password, args.role)
                print(f"added user {added['username']} (id {added['id']}, role {added['role']})")
            elif args.user_command == "remove":
                removed = await users.remove(args.name)
                print(f"removed user {removed['username']} (id {removed['id']})")
            else:
                for u in await users.list_users():
                    print(f"{u['id']}\t{u['username']}\t{u['role']}\t{u['created_at']}")
        finally:
            await storage.close()

    try:
        asyncio.run(run())
    except ApiError as exc:
        raise _Fatal(explain(exc.message, exc.details)) from None
    except StorageError as exc:
        raise _Fatal(str(exc)) from None
    return 0


def explain(message: str, details: Any) -> str:
    """An error for a terminal: `validation failed: password: Shorter than minimum length 8.`
    rather than a Python dict."""
    if isinstance(details, dict) and details:
        parts = []
        for key, value in details.items():
            text = "; ".join(map(str, value)) if isinstance(value, list) else str(value)
            parts.append(f"{key}: {text}")
        return f"{message}: {', '.join(parts)}"
    if isinstance(details, list) and details:
        return f"{message}: {'; '.join(map(str, details))}"
    return message if not details else f"{message}: {details}"


def _client_setup(config: Config, args: argparse.Namespace) -> tuple[str, str]:
    from server.auth import Authenticator

    host = config.server.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    url = args.url or _listening(config) or f"http://{host}:{config.server.port}"
    url = url.rstrip("/")
    tok = args.token or Authenticator(config.auth, config.var_dir, config.base_dir).mint(
        "cli", "service", 3600
    )
    return url, tok


def _listening(config: Config) -> str | None:
    """The URL a server using this config said it listens on (its port may come from an
    environment variable this process does not have)."""
    try:
        url = (config.var_dir / LISTENING_FILE).read_text().strip()
    except OSError:
        return None
    host = url.partition("://")[2].rpartition(":")[0]
    if host in ("0.0.0.0", "::", "[::]"):
        url = url.replace(host, "127.0.0.1", 1)
    return url or None


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
