"""`sensorcast` / `python -m server`: serve, migrate, token, user, publish, tail, bench."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from server.config import ROLES, Config, ConfigError, load_config

DEFAULT_CONFIG = "config.yaml"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sensorcast", description=__doc__)
    p.add_argument(
        "--config",
        metavar="PATH",
        help=f"config file (default: ./{DEFAULT_CONFIG} when it exists, else built-in defaults)",
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
    for name, help_ in (("publish", "publish an event"), ("tail", "print live events")):
        c = sub.add_parser(name, help=help_)
        c.add_argument("--url", help="server URL (default: from the config's host and port)")
        c.add_argument("--token", help="token to use (default: one minted from the local secret)")
        if name == "publish":
            c.add_argument("channel")
            c.add_argument("json", help="the event, as a JSON object")
        else:
            c.add_argument("channels", nargs="+", metavar="CHANNEL")
    # Its own flags (--quick, --only ...) pass through to bench/run.py: see main().
    sub.add_parser(
        "bench", help="benchmark fan-out, latency and memory (bench/README.md)", add_help=False
    )
    return p


def _load(path: str | None) -> Config:
    if path is None and Path(DEFAULT_CONFIG).is_file():
        path = DEFAULT_CONFIG
    return load_config(path)


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
    import uvloop
    from aiohttp import web

    from server.app import create_app
    from server.logs import RedactingAccessLogger, setup_logging
    from server.storage import StorageError

    setup_logging(config.logging)
    try:
        web.run_app(
            create_app(config),
            host=config.server.host,
            port=config.server.port,
            shutdown_timeout=config.server.shutdown_timeout,
            loop=uvloop.new_event_loop(),
            access_log_class=RedactingAccessLogger,
            print=lambda msg: print(msg, file=sys.stderr, flush=True),
        )
    except StorageError as exc:
        raise _Fatal(str(exc)) from None
    except OSError as exc:
        raise _Fatal(f"cannot serve on {config.server.host}:{config.server.port}: {exc}") from None
    return 0


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
        details = f" ({exc.details})" if exc.details else ""
        raise _Fatal(f"{exc.message}{details}") from None
    except StorageError as exc:
        raise _Fatal(str(exc)) from None
    return 0


def _client_setup(config: Config, args: argparse.Namespace) -> tuple[str, str]:
    from server.auth import Authenticator

    host = config.server.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    url = (args.url or f"http://{host}:{config.server.port}").rstrip("/")
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
    "bench": bench,
}
