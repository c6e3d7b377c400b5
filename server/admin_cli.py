"""`sensorcast migrate`, `token` and `user`: the database and identities, without a server."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from server.config import Config
from server.serve_cli import Fatal


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
        raise Fatal(str(exc)) from None


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
        raise Fatal("token: --role is required (or --user NAME for a login user's token)")
    try:
        print(auth.mint(sub, role, args.ttl, name=name, channels=channels))
    except RuntimeError as exc:
        raise Fatal(str(exc)) from None
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
        raise Fatal(exc.message) from None
    except StorageError as exc:
        raise Fatal(str(exc)) from None


def _read_password(args: argparse.Namespace) -> str:
    if args.password is not None:
        return str(args.password)
    if args.password_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    import getpass

    password = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != password:
        raise Fatal("the passwords differ")
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
        raise Fatal(explain(exc.message, exc.details)) from None
    except StorageError as exc:
        raise Fatal(str(exc)) from None
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
