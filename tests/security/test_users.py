"""Users: scrypt hashes, the users store on both backends, and POST /api/v1/auth/login.

`config` is overridden (as in tests/api/test_readings.py) so the app runs on this test's
own SQLite file or PostgreSQL schema: every test here runs on both backends.
"""

import asyncio
import base64
import threading
from pathlib import Path

import jwt
import pytest
from aiohttp.test_utils import TestClient

from server import auth as auth_module
from server.auth import hash_password, verify_password
from server.config import Config
from server.errors import Conflict, NotFound, Unauthorized, ValidationFailed
from server.keys import AUTH, SERVICES
from server.services.users import UsersService
from server.storage import IntegrityError, Storage
from server.storage import users as queries
from tests.api.test_system import error_of
from tests.conftest import eventually, make_config, open_ws

# Fixtures: every test here runs on SQLite and on PostgreSQL (skipped loudly when down).
from tests.storage.conftest import (  # noqa: F401
    Opener,
    backend,
    migrated,
    open_db,
    pg_server_url,
    storage,
)

LOGIN = "/api/v1/auth/login"
PASSWORD = "correct horse battery"


@pytest.fixture(autouse=True)
def config(open_db: Opener, tmp_path: Path) -> Config:  # noqa: F811
    return make_config(tmp_path, {"database": {"url": open_db.url}})


# -- hashing -----------------------------------------------------------------------------------


def test_hash_carries_scheme_params_and_salt_and_verifies():
    stored = hash_password("pässwörd ✓")
    scheme, n, r, p, salt, key = stored.split("$")
    assert (scheme, int(n), int(r), int(p)) == ("scrypt", 2**14, 8, 1)
    assert len(base64.b64decode(salt)) == 16
    assert len(base64.b64decode(key)) == 32
    assert verify_password("pässwörd ✓", stored)
    assert not verify_password("pässwörd", stored)


def test_same_password_hashes_differently_each_time():
    assert hash_password("same-password") != hash_password("same-password")


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "plain-text-password",
        "bcrypt$16384$8$1$AAAA$AAAA",
        "scrypt$16384$8$1$not base64!$AAAA",
        "scrypt$3$8$1$AAAAAAAA$AAAAAAAA",  # n not a power of two
        "scrypt$1073741824$8$1$AAAAAAAA$AAAAAAAA",  # n far past the cap: refused, not run
        "scrypt$16384$8$1$AAAAAAAA$",  # empty key
        "scrypt$x$8$1$AAAA$AAAA",
    ],
)
def test_malformed_stored_hash_never_verifies(stored: str):
    assert verify_password("anything", stored) is False


# -- storage, both backends ---------------------------------------------------------------------


async def test_users_store_insert_select_delete(migrated: Storage):  # noqa: F811
    from server import codec

    row = await queries.insert_user(migrated, "alice", "h1", "admin", codec.utcnow())
    assert row["username"] == "alice"
    assert (await queries.select_user_by_name(migrated, "alice"))["id"] == row["id"]
    assert await queries.select_user_by_name(migrated, "ALICE") is None
    with pytest.raises(IntegrityError):
        await queries.insert_user(migrated, "alice", "h2", "user", codec.utcnow())
    await queries.insert_user(migrated, "bob", "h3", "device", codec.utcnow())
    assert [u["username"] for u in await queries.select_users(migrated)] == ["alice", "bob"]
    assert (await queries.delete_user_by_name(migrated, "alice"))["id"] == row["id"]
    assert await queries.delete_user_by_name(migrated, "alice") is None


async def test_role_outside_the_four_is_refused_by_the_table(migrated: Storage):  # noqa: F811
    from server import codec

    with pytest.raises(IntegrityError):
        await queries.insert_user(migrated, "eve", "h", "root", codec.utcnow())


async def test_service_add_authenticate_remove(migrated: Storage):  # noqa: F811
    users = UsersService(migrated)
    added = await users.add("alice", PASSWORD, "user")
    assert set(added) == {"id", "username", "role", "created_at"}
    stored = await queries.select_user_by_name(migrated, "alice")
    assert stored["password_hash"].startswith("scrypt$")
    assert PASSWORD not in stored["password_hash"]

    assert (await users.authenticate("alice", PASSWORD))["id"] == added["id"]
    with pytest.raises(Unauthorized) as wrong:
        await users.authenticate("alice", PASSWORD + "x")
    with pytest.raises(Unauthorized) as unknown:
        await users.authenticate("mallory", PASSWORD)
    assert wrong.value.message == unknown.value.message == "invalid username or password"

    with pytest.raises(Conflict):
        await users.add("alice", PASSWORD, "admin")
    assert [u["username"] for u in await users.list_users()] == ["alice"]
    await users.remove("alice")
    with pytest.raises(NotFound):
        await users.remove("alice")
    with pytest.raises(Unauthorized):
        await users.authenticate("alice", PASSWORD)


@pytest.mark.parametrize(
    ("username", "password", "role", "field"),
    [
        ("", PASSWORD, "user", "username"),
        ("has space", PASSWORD, "user", "username"),
        ("x" * 65, PASSWORD, "user", "username"),
        ("alice", "short", "user", "password"),
        ("alice", "x" * 1025, "user", "password"),
        ("alice", PASSWORD, "root", "role"),
    ],
)
async def test_service_refuses_bad_new_users(
    migrated: Storage,  # noqa: F811
    username: str,
    password: str,
    role: str,
    field: str,
):
    with pytest.raises(ValidationFailed) as exc:
        await UsersService(migrated).add(username, password, role)
    assert list(exc.value.details) == [field]


async def test_unknown_user_still_runs_one_scrypt_check(
    migrated: Storage,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
):
    """Constant-time: an unknown name costs the same scrypt as a wrong password."""
    users = UsersService(migrated)
    await users.add("alice", PASSWORD, "user")
    calls: list[str] = []
    real = auth_module.verify_password

    def spy(password: str, stored: str) -> bool:
        calls.append(stored)
        return real(password, stored)

    monkeypatch.setattr("server.services.users.verify_password", spy)
    for name in ("alice", "nobody", "nobody-else"):
        with pytest.raises(Unauthorized):
            await users.authenticate(name, "wrong password")
    assert len(calls) == 3
    assert all(s.startswith("scrypt$16384$8$1$") for s in calls)


# -- login over HTTP, both backends -------------------------------------------------------------


async def add_user(client: TestClient, name: str = "alice", role: str = "user") -> int:
    return int((await client.app[SERVICES].users.add(name, PASSWORD, role))["id"])


async def test_login_answers_a_token_for_that_user(client: TestClient):
    uid = await add_user(client, role="device")

    resp = await client.post(LOGIN, json={"username": "alice", "password": PASSWORD})

    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert set(body) == {"token", "expires_at"}
    principal = client.app[AUTH].authenticate(body["token"])
    assert (principal.sub, principal.name, principal.role) == (str(uid), "alice", "device")
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 3600
    assert body["expires_at"].endswith("Z")


async def test_login_token_opens_that_users_private_channel(client: TestClient):
    uid = await add_user(client)
    token = (
        await (await client.post(LOGIN, json={"username": "alice", "password": PASSWORD})).json()
    )["token"]

    ws = await open_ws(client, f"/api/v1/ws?channel=user:{uid}&token={token}", handshake=False)
    hello = await ws.recv_type("connection")
    assert hello["user"] == {"id": str(uid), "name": "alice", "role": "user"}
    assert (await ws.recv_type("subscribed"))["channel"] == f"user:{uid}"
    other = await open_ws(
        client, f"/api/v1/ws?channel=user:{uid + 1}&token={token}", handshake=False
    )
    assert (await other.closed())[0] == 4003


@pytest.mark.parametrize(
    ("username", "password"),
    [("alice", "wrong password"), ("nobody", PASSWORD), ("ALICE", PASSWORD), ("alice", "")],
)
async def test_wrong_user_or_password_is_401_with_one_message(
    client: TestClient, username: str, password: str
):
    await add_user(client)

    resp = await client.post(LOGIN, json={"username": username, "password": password})

    error = await error_of(resp, 401, "unauthorized")
    assert error["message"] == "invalid username or password"


async def test_login_refuses_bad_bodies(client: TestClient):
    await error_of(await client.post(LOGIN, data=b"{nope"), 400, "invalid_json")
    error = await error_of(await client.post(LOGIN, json={"username": "a"}), 422, "bad_request")
    assert list(error["details"]) == ["password"]
    error = await error_of(await client.post(LOGIN, json=["alice", PASSWORD]), 422, "bad_request")
    error = await error_of(
        await client.post(LOGIN, json={"username": 7, "password": {"x": 1}}), 422, "bad_request"
    )
    assert set(error["details"]) == {"username", "password"}
    error = await error_of(
        await client.post(LOGIN, json={"username": "alice", "password": "x" * 5000}),
        422,
        "bad_request",
    )
    assert list(error["details"]) == ["password"]


async def test_concurrent_logins_do_not_block_the_loop(client: TestClient, monkeypatch):
    """scrypt runs in threads: the info endpoint answers while logins are hashing.

    Each hash is held inside scrypt (a thread gate) until the probe has answered, so the
    probe provably ran while all the logins were in flight. Were scrypt on the loop, the
    first hash would block it at the gate: no probe, and the gate's timeout fails the
    logins with 500. No clock is compared with anything.
    """
    await add_user(client)
    logins = 4
    real_scrypt = auth_module.hashlib.scrypt
    gate, lock, inside = threading.Event(), threading.Lock(), [0]

    def held_scrypt(*args, **kw):
        with lock:
            inside[0] += 1
        assert gate.wait(timeout=10), "scrypt held the event loop: the probe never ran"
        return real_scrypt(*args, **kw)

    monkeypatch.setattr(auth_module.hashlib, "scrypt", held_scrypt)
    pending = [
        asyncio.ensure_future(client.post(LOGIN, json={"username": "alice", "password": "bad"}))
        for _ in range(logins)
    ]
    await eventually(lambda: inside[0] == logins)  # every login is hashing now

    info = await client.get("/api/v1/")
    assert info.status == 200
    assert (await info.json())["name"] == "sensorcast"
    assert not any(login.done() for login in pending)
    gate.set()
    answers = await asyncio.gather(*pending)
    assert [r.status for r in answers] == [401] * logins


async def test_login_with_only_a_public_key_is_503(client: TestClient, monkeypatch):
    monkeypatch.setattr(client.app[AUTH], "signing_key", None)
    await add_user(client)
    resp = await client.post(LOGIN, json={"username": "alice", "password": PASSWORD})
    await error_of(resp, 503, "unavailable")


async def test_login_is_in_the_openapi_document(client: TestClient):
    doc = await (await client.get("/api/v1/openapi.json")).json()
    post = doc["paths"][LOGIN]["post"]
    assert "security" not in post
    schema = post["requestBody"]["content"]["application/json"]["schema"]
    assert "$ref" in schema or "properties" in schema
