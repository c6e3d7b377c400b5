"""POST /api/v1/auth/login: username + password -> a JWT for that user.

A plain HTTP view rather than an @operation: a socket is authenticated when it connects,
so login has no WebSocket `request` form, and it needs the Authenticator to sign.

The token's `sub` is the user's id (as a string), `name` its username, `role` its role:
the id is what `user:{id}` channels and notifications address, and it stays the same if
a username is ever reused after `sensorcast user remove`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from marshmallow import Schema, ValidationError, fields, validate

from server import codec
from server.api.middleware import RestLimiter
from server.api.respond import json_response
from server.config import AuthConfig
from server.errors import InvalidJson, Unavailable, ValidationFailed
from server.keys import AUTH, CONFIG, LOGIN_LIMITS, SERVICES
from server.services.users import MAX_PASSWORD_LENGTH

LOGIN_PATH = "/api/v1/auth/login"
# Seed 004 tells its clients to get a JWT here.
SEED_LOGIN_PATH = "/auth/login"


class LoginLimits:
    """Attempts per minute per client IP and per username, before any password is hashed:
    each attempt costs ~50 ms of scrypt, so the generic REST limit alone would let a few
    clients pin the CPU (or guess one account's password from many addresses). Each table
    is a RestLimiter: bounded however many addresses or names are tried."""

    def __init__(self, config: AuthConfig) -> None:
        def per_minute(n: int) -> RestLimiter | None:
            return RestLimiter(n / 60.0, n) if n else None

        self.by_ip = per_minute(config.login_rate_per_ip)
        self.by_user = per_minute(config.login_rate_per_user)

    def check(self, ip: str, username: str) -> None:
        """RateLimited (429 with Retry-After) when either limit is spent."""
        if self.by_ip is not None:
            self.by_ip.check(ip)
        if self.by_user is not None:
            self.by_user.check(username.casefold())


class LoginIn(Schema):
    username = fields.String(required=True, validate=validate.Length(min=1, max=256))
    password = fields.String(required=True, validate=validate.Length(max=MAX_PASSWORD_LENGTH))


class LoginOut(Schema):
    token = fields.String(required=True)
    expires_at = fields.DateTime(required=True, metadata={"description": "ISO 8601 UTC"})


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = codec.loads(raw) if raw.strip() else {}
    except codec.JSONDecodeError as exc:
        raise InvalidJson(f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ValidationFailed(details={"_schema": ["the body must be a JSON object"]})
    try:
        loaded: dict[str, Any] = LoginIn().load(body)
    except ValidationError as exc:
        raise ValidationFailed(details=exc.messages) from None
    return loaded


async def login(request: web.Request) -> web.Response:
    """200 {token, expires_at}; 401 for a wrong username or password (same message)."""
    auth = request.app[AUTH]
    if not auth.can_mint:
        raise Unavailable(f"login is off: this server only verifies {auth.algorithm} tokens")
    body = await _body(request)
    request.app[LOGIN_LIMITS].check(request.remote or "unknown", body["username"])
    user = await request.app[SERVICES].users.authenticate(body["username"], body["password"])
    token, exp = auth.mint_expiring(
        str(user["id"]), user["role"], request.app[CONFIG].auth.login_ttl, name=user["username"]
    )
    expires_at = codec.isotime(codec.datetime.fromtimestamp(exp, codec.UTC))
    return json_response({"token": token, "expires_at": expires_at})
