"""Who is calling: JWT (HS256 secret or RS256/ES256 public key), config API tokens, and
scrypt password hashes for the users table."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from server.config import ANONYMOUS, AuthConfig, ConfigError
from server.errors import Forbidden, Unauthorized

log = logging.getLogger(__name__)

SECRET_FILE = "jwt_secret"
# Anonymous sockets' identities (presence, chat authorship, read receipts) are this prefix
# + their label: a `?user_id=1` label can then never be, or merge with, authenticated user
# "1". A token whose subject starts with it is refused, so the two never meet.
ANONYMOUS_KEY_PREFIX = "anonymous:"


def identity_label(key: str | None) -> tuple[str | None, bool]:
    """A stored identity key -> (the id to display, whether it is an anonymous label)."""
    if key is not None and key.startswith(ANONYMOUS_KEY_PREFIX):
        return key[len(ANONYMOUS_KEY_PREFIX) :], True
    return key, False


@dataclass(frozen=True, slots=True)
class Principal:
    sub: str
    role: str  # admin | service | user | device | anonymous
    name: str | None = None
    # A token's `channels` claim: glob patterns it may subscribe to; None = no narrowing.
    channels: tuple[str, ...] | None = None
    # A JWT's `exp` (Unix seconds); None for API tokens and anonymous callers.
    exp: float | None = None

    @property
    def anonymous(self) -> bool:
        return self.role == ANONYMOUS

    def public(self) -> dict[str, Any]:
        return {"id": self.sub, "name": self.name, "role": self.role}


def anonymous(user_id: str | None = None, username: str | None = None) -> Principal:
    """An unauthenticated caller; user_id/username only label it (they never grant user:{id})."""
    return Principal(sub=user_id or "anonymous", role=ANONYMOUS, name=username)


def load_or_create_secret(var_dir: Path) -> str:
    """The HS256 secret when none is configured: made once, kept under var/ with mode 0600."""
    path = var_dir / SECRET_FILE
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        pass
    var_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    # Written whole to a private temp file, then linked into place: two processes starting
    # at once never see a half-written file, and the loser reads the winner's secret.
    tmp = var_dir / f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(secret + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            return path.read_text(encoding="utf-8").strip()
    finally:
        tmp.unlink(missing_ok=True)
    log.info("generated a JWT secret in %s", path)
    return secret


def read_public_key(key: str, base_dir: Path) -> str:
    """`auth.jwt_public_key` is the PEM text itself or a path (relative to the config)."""
    if "-----BEGIN" in key:
        return key
    path = Path(key).expanduser()
    path = path if path.is_absolute() else base_dir / path
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"auth.jwt_public_key: cannot read {path} ({exc.strerror})") from None


def load_public_key(algorithm: str, pem: str) -> Any:
    """The parsed RS256/ES256 key, checked at start: a bad key is a config error, not a
    401 for every token (and is parsed once, not per token)."""
    if not jwt.algorithms.has_crypto:
        raise ConfigError(
            f"auth.jwt_algorithm: {algorithm} needs the cryptography package "
            "(pip install 'PyJWT[crypto]')"
        )
    try:
        return jwt.get_algorithm_by_name(algorithm).prepare_key(pem)
    except (jwt.InvalidKeyError, ValueError, TypeError):
        kind = "an RSA" if algorithm == "RS256" else "a P-256 EC"
        raise ConfigError(
            f"auth.jwt_public_key: not a valid {algorithm} key (expected {kind} public key, PEM)"
        ) from None


class Authenticator:
    def __init__(self, config: AuthConfig, var_dir: Path, base_dir: Path) -> None:
        self.config = config
        self.algorithm = config.jwt_algorithm
        if self.algorithm == "HS256":
            self.verify_key = config.jwt_secret or load_or_create_secret(var_dir)
            self.signing_key: str | None = self.verify_key
        else:
            self.verify_key = load_public_key(
                self.algorithm, read_public_key(config.jwt_public_key, base_dir)
            )
            self.signing_key = None
        self._api_tokens = [(t.token.encode(), t) for t in config.api_tokens]

    def authenticate(self, token: str) -> Principal:
        """Principal for a bearer token (API token or JWT); Unauthorized when it is not valid."""
        encoded = token.encode()
        for candidate, api_token in self._api_tokens:
            if hmac.compare_digest(candidate, encoded):
                return Principal(sub=api_token.name, role=api_token.role, name=api_token.name)
        try:
            claims = jwt.decode(
                token,
                self.verify_key,
                algorithms=[self.algorithm],
                leeway=self.config.jwt_leeway,
                options={"require": ["sub", "role", "exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        if str(claims["sub"]).startswith(ANONYMOUS_KEY_PREFIX):
            raise Unauthorized(f"invalid token: sub may not start with {ANONYMOUS_KEY_PREFIX!r}")
        role = claims.get("role")
        if role not in ("admin", "service", "user", "device"):
            raise Unauthorized("invalid token: unknown role")
        channels = claims.get("channels")
        if channels is not None and not (
            isinstance(channels, list) and all(isinstance(c, str) for c in channels)
        ):
            raise Unauthorized("invalid token: channels must be a list of strings")
        name = claims.get("name")
        return Principal(
            sub=str(claims["sub"]),
            role=role,
            name=str(name) if name is not None else None,
            channels=tuple(channels) if channels is not None else None,
            exp=float(claims["exp"]),
        )

    def mint(
        self,
        sub: str,
        role: str,
        ttl: float = 3600,
        name: str | None = None,
        channels: list[str] | None = None,
    ) -> str:
        return self.mint_expiring(sub, role, ttl, name, channels)[0]

    @property
    def can_mint(self) -> bool:
        return self.signing_key is not None

    def mint_expiring(
        self,
        sub: str,
        role: str,
        ttl: float = 3600,
        name: str | None = None,
        channels: list[str] | None = None,
    ) -> tuple[str, int]:
        """A signed HS256 token and its `exp` (Unix seconds)."""
        if self.signing_key is None:
            raise RuntimeError(f"cannot mint {self.algorithm} tokens: only a public key is set")
        now = int(time.time())
        exp = now + int(ttl)
        claims: dict[str, Any] = {"sub": sub, "role": role, "iat": now, "exp": exp}
        if name is not None:
            claims["name"] = name
        if channels is not None:
            claims["channels"] = channels
        return jwt.encode(claims, self.signing_key, algorithm="HS256"), exp

    def resolve(self, token: str | None, user_id: str | None, username: str | None) -> Principal:
        """The caller of a request or socket: token when given, else anonymous if allowed."""
        if token:
            return self.authenticate(token)
        if not self.config.allow_anonymous:
            raise Unauthorized("a token is required")
        return anonymous(user_id, username)


# scrypt cost: 2**14 x 8 = 16 MiB and ~50 ms per hash. The parameters are stored with each
# hash, so raising them later leaves existing passwords verifiable.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_SALT_BYTES = 16
SCRYPT_KEY_BYTES = 32
# Refuse stored parameters past these (a tampered row must not make verify eat the RAM).
_SCRYPT_MAX_N = 2**20
_SCRYPT_MAXMEM = 256 * 1024 * 1024


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def hash_password(password: str) -> str:
    """`scrypt$N$r$p$salt$key` (salt and key base64): the text the users table stores.

    CPU-bound (~50 ms): async callers run it in a thread.
    """
    salt = secrets.token_bytes(SCRYPT_SALT_BYTES)
    key = hashlib.scrypt(
        password.encode("utf-8", "surrogatepass"),
        salt=salt,
        n=SCRYPT_N,
        r=SCRYPT_R,
        p=SCRYPT_P,
        dklen=SCRYPT_KEY_BYTES,
        maxmem=_SCRYPT_MAXMEM,
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches a hash_password() text; False for any malformed text.

    The comparison is constant-time; the cost is that of the stored parameters.
    """
    try:
        scheme, n_text, r_text, p_text, salt_text, key_text = stored.split("$")
        n, r, p = int(n_text), int(r_text), int(p_text)
        salt = base64.b64decode(salt_text, validate=True)
        expected = base64.b64decode(key_text, validate=True)
    except ValueError:
        return False
    if scheme != "scrypt" or not (1 < n <= _SCRYPT_MAX_N and 0 < r <= 32 and 0 < p <= 16):
        return False
    try:
        key = hashlib.scrypt(
            password.encode("utf-8", "surrogatepass"),
            salt=salt,
            n=n,
            r=r,
            p=p,
            dklen=len(expected),
            maxmem=_SCRYPT_MAXMEM,
        )
    except ValueError:  # n not a power of two, dklen 0, over maxmem
        return False
    return hmac.compare_digest(key, expected)


WRITE_ROLES = ("admin", "service")


def require_role(principal: Principal, roles: tuple[str, ...], anonymous_writes: bool) -> None:
    """Raise Unauthorized (no token) or Forbidden (wrong role) unless principal has a role."""
    if principal.role == "admin" or principal.role in roles:
        return
    if principal.anonymous:
        if anonymous_writes and "service" in roles:
            return
        raise Unauthorized("this operation needs a token")
    raise Forbidden(f"role {principal.role!r} may not do this")
