"""Hostile tokens: expired, tampered, `alg: none`, HS/RS key confusion, wrong algorithm,
missing or malformed claims. Refused with 401 on REST (even where anonymous may read) and
closed with 4001 on WebSocket, on HS256, RS256 and ES256 servers alike."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.app import create_app
from server.auth import Authenticator
from server.config import AuthConfig
from server.errors import Unauthorized
from server.keys import AUTH
from tests.api.test_system import error_of
from tests.conftest import auth_header, make_config, open_ws
from tests.security.conftest import FUZZ_CASES


def b64(data: bytes | dict[str, Any]) -> str:
    raw = json.dumps(data).encode() if isinstance(data, dict) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def claims(role: str = "admin", **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "mallory", "role": role, "iat": now, "exp": now + 600, **extra}


def unsigned(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return f"{b64(header)}.{b64(payload)}.{b64(signature)}"


def hs256_with(key: bytes, payload: dict[str, Any], alg: str = "HS256") -> str:
    """HMAC-signed by hand: PyJWT (rightly) refuses a PEM key as an HMAC secret."""
    signing_input = f"{b64({'alg': alg, 'typ': 'JWT'})}.{b64(payload)}".encode()
    digest = {"HS256": hashlib.sha256, "HS512": hashlib.sha512}[alg]
    return f"{signing_input.decode()}.{b64(hmac.new(key, signing_input, digest).digest())}"


def pem_public(private: Any) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


async def assert_refused(client: TestClient, token: str) -> None:
    """401 over REST (on a route anonymous callers may read), 4001 on both socket routes."""
    resp = await client.get("/api/v1/sensors", headers=auth_header(token))
    await error_of(resp, 401, "unauthorized")
    resp = await client.get("/api/v1/sensors", params={"token": token})
    await error_of(resp, 401, "unauthorized")
    for path in ("/api/v1/ws", "/api/v1/ws/secure"):
        ws = await open_ws(client, path, handshake=False, params={"token": token})
        assert (await ws.closed())[0] == 4001, (path, token)


async def assert_accepted(client: TestClient, token: str, role: str = "admin") -> None:
    resp = await client.get("/api/v1/sensors", headers=auth_header(token))
    assert resp.status == 200, await resp.text()
    ws = await open_ws(client, "/api/v1/ws/secure", handshake=False, params={"token": token})
    assert (await ws.recv_type("connection"))["user"]["role"] == role


# -- HS256 server ------------------------------------------------------------------------------


@pytest.fixture
def secret(client: TestClient) -> bytes:
    key = client.app[AUTH].signing_key
    assert key is not None
    return key.encode()


def tamper_payload(token: str, **changes: Any) -> str:
    header, payload, signature = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return f"{header}.{b64({**body, **changes})}.{signature}"


HS_BAD: dict[str, Callable[[bytes, Authenticator], str]] = {
    "expired": lambda s, a: a.mint("u", "user", ttl=-5),
    "tampered_role": lambda s, a: tamper_payload(a.mint("u", "user"), role="admin"),
    "tampered_exp": lambda s, a: tamper_payload(a.mint("u", "user", ttl=-5), exp=2**40),
    "tampered_signature": lambda s, a: a.mint("u", "admin")[:-4] + "AAAA",
    "stripped_signature": lambda s, a: a.mint("u", "admin").rsplit(".", 1)[0] + ".",
    "alg_none": lambda s, a: unsigned({"alg": "none", "typ": "JWT"}, claims()),
    "alg_None": lambda s, a: unsigned({"alg": "None"}, claims()),
    "alg_NONE_with_sig": lambda s, a: unsigned({"alg": "NONE"}, claims(), b"x" * 32),
    "alg_missing": lambda s, a: unsigned({"typ": "JWT"}, claims()),
    "alg_list": lambda s, a: unsigned({"alg": ["HS256"]}, claims()),
    "header_not_object": lambda s, a: f"{b64(b'[1]')}.{b64(claims())}.",
    "other_secret": lambda s, a: jwt.encode(claims(), "x" * 48, algorithm="HS256"),
    "hs512_same_secret": lambda s, a: hs256_with(s, claims(), alg="HS512"),
    "rs256_attacker_key": lambda s, a: jwt.encode(claims(), RSA_KEY, algorithm="RS256"),
    "es256_attacker_key": lambda s, a: jwt.encode(claims(), EC_KEY, algorithm="ES256"),
    "missing_exp": lambda s, a: hs256_with(s, {"sub": "u", "role": "admin"}),
    "missing_role": lambda s, a: hs256_with(s, {"sub": "u", "exp": int(time.time()) + 60}),
    "missing_sub": lambda s, a: hs256_with(s, {"role": "admin", "exp": int(time.time()) + 60}),
    "unknown_role": lambda s, a: hs256_with(s, claims(role="root")),
    "anonymous_role": lambda s, a: hs256_with(s, claims(role="anonymous")),
    "role_list": lambda s, a: hs256_with(s, claims(role=["admin"])),
    "channels_string": lambda s, a: hs256_with(s, claims(channels="general")),
    "channels_numbers": lambda s, a: hs256_with(s, claims(channels=[1, 2])),
    "exp_string": lambda s, a: hs256_with(s, claims(exp="tomorrow")),
    "not_yet_valid": lambda s, a: hs256_with(s, claims(nbf=int(time.time()) + 3600)),
    "garbage": lambda s, a: "not-a-jwt",
    "empty_segments": lambda s, a: "..",
    "two_segments": lambda s, a: a.mint("u", "admin").rsplit(".", 1)[0],
}


@pytest.mark.parametrize("kind", list(HS_BAD))
async def test_hs256_server_refuses(client: TestClient, secret: bytes, kind: str):
    await assert_refused(client, HS_BAD[kind](secret, client.app[AUTH]))


async def test_hs256_server_accepts_its_own_tokens(client: TestClient, secret: bytes):
    await assert_accepted(client, client.app[AUTH].mint("u", "admin"))
    await assert_accepted(client, hs256_with(secret, claims(role="device")), role="device")


async def test_leeway_accepts_just_expired_tokens(make_client: Callable[..., Any]):
    client = await make_client({"auth": {"jwt_leeway": 60}})
    await assert_accepted(client, client.app[AUTH].mint("u", "admin", ttl=-5))
    await assert_refused(client, client.app[AUTH].mint("u", "admin", ttl=-120))


# -- RS256 / ES256 servers ---------------------------------------------------------------------


async def asym_client(aiohttp_client: Any, tmp_path: Path, alg: str, private: Any) -> TestClient:
    (tmp_path / "pub.pem").write_bytes(pem_public(private))
    config = make_config(tmp_path, {"auth": {"jwt_algorithm": alg, "jwt_public_key": "pub.pem"}})
    return await aiohttp_client(create_app(config))


@pytest.mark.parametrize(("alg", "private"), [("RS256", RSA_KEY), ("ES256", EC_KEY)])
async def test_asymmetric_server_accepts_tokens_of_its_key_only(
    aiohttp_client: Any, tmp_path: Path, alg: str, private: Any
):
    client = await asym_client(aiohttp_client, tmp_path, alg, private)
    public_pem = pem_public(private)
    await assert_accepted(client, jwt.encode(claims(), private, algorithm=alg))
    refused = {
        # Key confusion: the public key (which anyone may have) used as an HMAC secret.
        "hs256_public_key_as_secret": hs256_with(public_pem, claims()),
        "hs256_public_key_stripped": hs256_with(public_pem.strip(), claims()),
        "alg_none": unsigned({"alg": "none"}, claims()),
        "other_rsa_key": jwt.encode(claims(), OTHER_RSA_KEY, algorithm="RS256"),
        "other_alg_family": (
            jwt.encode(claims(), EC_KEY, algorithm="ES256")
            if alg == "RS256"
            else jwt.encode(claims(), RSA_KEY, algorithm="RS256")
        ),
        "hs256_config_default_secret": jwt.encode(claims(), "x" * 48, algorithm="HS256"),
        "tampered_role": tamper_payload(
            jwt.encode(claims(role="user"), private, algorithm=alg), role="admin"
        ),
        "expired": jwt.encode(claims(exp=int(time.time()) - 5), private, algorithm=alg),
    }
    for name, token in refused.items():
        try:
            await assert_refused(client, token)
        except AssertionError as exc:
            raise AssertionError(f"{alg} server accepted {name}") from exc


# -- fuzzed tokens straight into the authenticator ---------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
_claimish = st.fixed_dictionaries(
    {},
    optional={
        "alg": st.sampled_from(["HS256", "none", "RS256", "HS512", ""]) | _json,
        "sub": _json,
        "role": st.sampled_from(["admin", "user", "root"]) | _json,
        "exp": st.integers() | st.floats() | _json,
        "channels": _json,
    },
)
_segment = st.one_of(
    _claimish.map(lambda d: b64(json.dumps(d, allow_nan=True).encode())),
    st.binary(max_size=40).map(b64),
    st.text(max_size=40),
)
TOKENS = st.one_of(
    st.text(max_size=200),
    st.tuples(_segment, _segment, _segment).map(".".join),
)
FUZZ_AUTH = Authenticator(AuthConfig(jwt_secret="s" * 32), Path("/nonexistent"), Path("."))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(token=TOKENS)
def test_fuzzed_tokens_are_unauthorized_never_a_crash(token: str):
    FUZZ_CASES["tokens (Authenticator.authenticate)"] += 1
    with pytest.raises(Unauthorized):
        FUZZ_AUTH.authenticate(token)


# -- a server that could not verify its tokens does not start ---------------------------------


def test_asymmetric_algorithm_without_cryptography_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    from server.config import ConfigError

    monkeypatch.setattr(jwt.algorithms, "has_crypto", False)
    (tmp_path / "pub.pem").write_bytes(pem_public(RSA_KEY))
    config = make_config(
        tmp_path, {"auth": {"jwt_algorithm": "RS256", "jwt_public_key": "pub.pem"}}
    )
    with pytest.raises(ConfigError, match=r"^auth.jwt_algorithm: RS256 needs the cryptography"):
        create_app(config)


@pytest.mark.parametrize(
    ("alg", "pem"),
    [
        ("RS256", pem_public(EC_KEY)),
        ("ES256", pem_public(RSA_KEY)),
        ("RS256", b"-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n"),
    ],
    ids=["ec key for RS256", "rsa key for ES256", "garbage"],
)
def test_wrong_or_unparsable_public_key_is_a_config_error(tmp_path: Path, alg: str, pem: bytes):
    from server.config import ConfigError

    (tmp_path / "pub.pem").write_bytes(pem)
    config = make_config(tmp_path, {"auth": {"jwt_algorithm": alg, "jwt_public_key": "pub.pem"}})
    with pytest.raises(ConfigError, match=rf"^auth.jwt_public_key: not a valid {alg} key"):
        create_app(config)
