"""Configuration: config.yaml + SENSORCAST_<SECTION>_<KEY> environment overrides.

Each section is a frozen dataclass; its marshmallow schema is derived from the field types
(server/config_schema.py) so a setting is declared once. Loading never raises anything
but ConfigError, whose message is the one line the CLI prints before exiting.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from marshmallow import ValidationError, validate

from server.channel_names import check_channel
from server.config_schema import first_error, schema_for
from server.errors import BadRequest
from server.mqtt_topics import TopicError, broker_address, compile_pattern

ENV_PREFIX = "SENSORCAST_"
# Reserved for the test suite's own knobs (database URLs and the like).
ENV_RESERVED = ("SENSORCAST_TEST_",)
# Not a setting: which config file to read (the CLI's config discovery).
ENV_CONFIG = "SENSORCAST_CONFIG"
ROLES = ("admin", "service", "user", "device")
ANONYMOUS = "anonymous"


class ConfigError(Exception):
    """A bad setting; str() is one line naming the key and the problem."""


def setting(default: Any, check: validate.Validator | None = None, *, upper: bool = False) -> Any:
    """A setting's default and check; `upper`: a choice given in any case (`warning`)."""
    metadata = {"check": check, "upper": upper}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = setting(8000, validate.Range(0, 65535))
    shutdown_timeout: float = setting(10.0, validate.Range(min=0))
    allowed_origins: list[str] = setting(["*"])
    max_body_bytes: int = setting(8 * 1024 * 1024, validate.Range(min=1024))
    # REST requests per second per client IP, and the burst allowed; 0 = off.
    rate_limit: float = setting(1000.0, validate.Range(min=0))
    rate_burst: float = setting(2000.0, validate.Range(min=0))


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    url: str = "sqlite:///var/sensorcast.db"
    pool_min: int = setting(1, validate.Range(min=0))
    pool_max: int = setting(10, validate.Range(min=1))
    auto_migrate: bool = True
    # Seconds a request waits for a free connection (PostgreSQL's pool, SQLite's one
    # connection) before it is answered 503 unavailable instead of queueing forever.
    acquire_timeout: float = setting(10.0, validate.Range(min=0.01))


@dataclass(frozen=True, slots=True)
class BusConfig:
    # local: one process; redis: several instances sharing the `redis` section's server.
    backend: Literal["local", "redis"] = "local"


@dataclass(frozen=True, slots=True)
class RedisConfig:
    url: str = "redis://127.0.0.1:6379/0"
    # Seconds an instance's presence entries live unless it refreshes them (a third of
    # this apart): a dead instance's members leave within it.
    presence_ttl: float = setting(30.0, validate.Range(min=1))
    # Every key and pub/sub channel starts with it: several deployments (or test runs)
    # can share one Redis.
    prefix: str = setting("sensorcast", validate.Length(min=1, max=64))


@dataclass(frozen=True, slots=True)
class HistoryConfig:
    size: int = setting(100, validate.Range(min=0))
    ttl: float = setting(300.0, validate.Range(min=0))
    # Payload bytes kept per channel, oldest dropped first; 0 = no cap beyond `size`.
    max_bytes: int = setting(0, validate.Range(min=0))


@dataclass(frozen=True, slots=True)
class WsConfig:
    heartbeat: float = setting(20.0, validate.Range(min=0))
    max_message_bytes: int = setting(64 * 1024, validate.Range(min=256))
    max_queue_bytes: int = setting(1024 * 1024, validate.Range(min=1024))
    rate_limit: float = setting(100.0, validate.Range(min=0))
    rate_burst: float = setting(200.0, validate.Range(min=0))
    max_connections: int = setting(10000, validate.Range(min=0))
    max_connections_per_ip: int = setting(1000, validate.Range(min=0))
    duplicate_client_id: Literal["reject", "replace"] = "reject"
    compression: bool = False


@dataclass(frozen=True, slots=True)
class SseConfig:
    # Seconds between `: keepalive` comment lines on every Server-Sent Events stream.
    keepalive: float = setting(15.0, validate.Range(min=1))


@dataclass(frozen=True, slots=True)
class ApiToken:
    name: str = setting("", validate.Length(min=1))
    # Short ones are accepted (seed clients have `abc123`, `dev` baked in) with a warning.
    token: str = setting("", validate.Length(min=1))
    role: Literal["admin", "service", "user", "device"] = "service"


@dataclass(frozen=True, slots=True)
class AuthConfig:
    allow_anonymous: bool = True
    anonymous_writes: bool = False
    jwt_secret: str = ""
    jwt_public_key: str = ""
    jwt_algorithm: Literal["HS256", "RS256", "ES256"] = "HS256"
    jwt_leeway: float = setting(0.0, validate.Range(min=0))
    api_tokens: list[ApiToken] = setting([])
    # Lifetime of the tokens POST /api/v1/auth/login issues, in seconds.
    login_ttl: float = setting(3600.0, validate.Range(min=1))
    # Login attempts per minute per client IP and per username (429 past them); 0 = off.
    login_rate_per_ip: int = setting(30, validate.Range(min=0))
    login_rate_per_user: int = setting(10, validate.Range(min=0))


@dataclass(frozen=True, slots=True)
class NamespaceRule:
    # Roles that may subscribe / publish from a client; `anonymous` means sockets without a
    # token. admin may always do both.
    subscribe: list[str] = setting([ANONYMOUS, "user", "device", "service", "admin"])
    publish: list[str] = setting([])
    history: bool = True
    # Per-namespace history bounds; -1 takes the `history` section's value.
    history_size: int = setting(-1, validate.Range(min=-1))
    history_ttl: float = setting(-1.0, validate.Range(min=-1))
    history_max_bytes: int = setting(-1, validate.Range(min=-1))
    # Who is on the channel: `subscribed.presence`, `user_joined` / `user_left`.
    presence: bool = False


@dataclass(frozen=True, slots=True)
class ChannelsConfig:
    namespaces: dict[str, NamespaceRule] = field(
        default_factory=lambda: {"chat": NamespaceRule(presence=True)}
    )

    def rule(self, namespace: str) -> NamespaceRule:
        return self.namespaces.get(namespace) or self.namespaces.get("default") or _OPEN


_OPEN = NamespaceRule()


@dataclass(frozen=True, slots=True)
class ChatConfig:
    max_message_length: int = setting(4000, validate.Range(min=1, max=60_000))
    # Messages a socket gets right after `subscribed` on a chat room (0 = none).
    history_on_join: int = setting(50, validate.Range(min=0, max=1000))
    # Seconds after which a `typing` nobody renewed ends by itself.
    typing_timeout: float = setting(5.0, validate.Range(min=0.1, max=300))


@dataclass(frozen=True, slots=True)
class NotificationRoute:
    # An fnmatch glob on the notification's event name.
    event: str = "*"
    # A payload key the rule needs; `{key}` placeholders in `channel` need theirs too.
    key: str = ""
    channel: str = setting("", validate.Length(min=1))


DEFAULT_ROUTES = (
    NotificationRoute(event="user.*", key="user_id", channel="user:{user_id}"),
    # Seed 003's routing: usuarioId -> that user, its global events -> everyone, temaId ->
    # that topic's room.
    NotificationRoute(event="user.*", key="usuarioId", channel="user:{usuarioId}"),
    NotificationRoute(event="presentacion.creada", channel="general"),
    NotificationRoute(event="grabacion.creada", channel="general"),
    NotificationRoute(event="*", key="temaId", channel="chat:tema_{temaId}"),
    NotificationRoute(event="*", key="room", channel="chat:{room}"),
)


@dataclass(frozen=True, slots=True)
class NotificationsConfig:
    # Ordered: the first rule that matches names the channel; none matches -> default_channel.
    routes: list[NotificationRoute] = field(default_factory=lambda: list(DEFAULT_ROUTES))
    default_channel: str = "general"
    # Stored notifications kept (the newest); older ones are deleted hourly. 0 = keep all.
    history_size: int = setting(10000, validate.Range(min=0))


@dataclass(frozen=True, slots=True)
class CompatConfig:
    # /ws/{x}: a chat room (seeds 000 and 002, the default), a client id (seed 003, whose
    # room is `?room=`), or a room speaking seed 002's protocol exactly (`seed002`).
    ws_path: Literal["room", "client_id", "seed002"] = "room"
    # Seed 001's `GET /ws`: seconds without a client frame before the socket is closed
    # (4008 "idle timeout"), as that seed did after 5 minutes; 0 = never.
    idle_timeout: float = setting(300.0, validate.Range(min=0))


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    # Readings older than this many days are deleted every hour; 0 keeps them forever.
    readings_days: int = setting(30, validate.Range(min=0))


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = setting("INFO", upper=True)
    format: Literal["text", "json"] = "text"


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    # GET /metrics needs `Authorization: Bearer <token>` when set; empty = open.
    token: str = ""


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """Device ingest from an MQTT broker (SPEC §11); off unless enabled."""

    enabled: bool = False
    # mqtt://host:port, or mqtts:// for TLS (port 8883 unless given).
    url: str = "mqtt://127.0.0.1:1883"
    username: str = ""
    password: str = ""
    # Empty: sensorcast-<host>-<port>. It names the broker session that keeps
    # unacknowledged messages across a restart, so it must be stable and unique.
    client_id: str = ""
    qos: int = setting(1, validate.OneOf([0, 1, 2]))
    # `{sensor_id}` (a whole level) names the sensor; `+` and `#` are allowed elsewhere.
    topics: list[str] = setting(["sensors/{sensor_id}/readings"])
    dead_letter_topic: str = ""
    # Messages stored and published as one batch at most (as one REST batch).
    max_batch: int = setting(1000, validate.Range(min=1, max=10_000))
    # Reconnect backoff: doubles from 0.5 s up to this many seconds.
    reconnect_max: float = setting(30.0, validate.Range(min=0.5))


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    bus: BusConfig = field(default_factory=BusConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    ws: WsConfig = field(default_factory=WsConfig)
    sse: SseConfig = field(default_factory=SseConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    channels: ChannelsConfig = field(default_factory=ChannelsConfig)
    chat: ChatConfig = field(default_factory=ChatConfig)
    notifications: NotificationsConfig = field(default_factory=NotificationsConfig)
    compat: CompatConfig = field(default_factory=CompatConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    # Directory of the config file: relative paths (SQLite file, var/) resolve against it.
    base_dir: Path = field(default_factory=Path.cwd)

    @property
    def var_dir(self) -> Path:
        return self.base_dir / "var"

    def resolve(self, path: str | Path) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.base_dir / p


SECTIONS: dict[str, type] = {
    name: tp for name, tp in typing.get_type_hints(Config).items() if name != "base_dir"
}


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """` (did you mean port?)` for a near miss, else ``."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name.startswith(ENV_RESERVED) or name == ENV_CONFIG:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("_")
        if section not in SECTIONS or not key:
            hint = did_you_mean(section, SECTIONS)
            raise ConfigError(f"{name}: names no setting (SENSORCAST_<SECTION>_<KEY>){hint}")
        hints = typing.get_type_hints(SECTIONS[section])
        if key not in hints:
            raise ConfigError(f"{name}: {section}.{key} names no setting{did_you_mean(key, hints)}")
        value: Any = raw
        if typing.get_origin(hints[key]) in (list, dict):
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise ConfigError(f"{name}: {section}.{key} must be given as JSON") from None
        out.setdefault(section, {})[key] = value
    return out


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the YAML file (if any), apply environment overrides, validate, return Config."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    base_dir = Path.cwd()
    if path is not None:
        p = Path(path).expanduser().resolve()
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}: not valid YAML{where}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        data = loaded or {}
        base_dir = p.parent
    for section, values in _env_overrides(environ).items():
        current = data.get(section)
        if current is not None and not isinstance(current, dict):
            raise ConfigError(f"{section}: must be a mapping")
        data[section] = {**(current or {}), **values}

    sections: dict[str, Any] = {}
    for name, value in data.items():
        if name not in SECTIONS:
            hint = did_you_mean(name, SECTIONS)
            raise ConfigError(f"{name}: names no setting{hint} (sections: {', '.join(SECTIONS)})")
        if value is None:
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: must be a mapping of settings")
        if name == "logging" and isinstance(value.get("level"), str):
            # `warning` = `WARNING` (SPEC §1).
            value = {**value, "level": value["level"].upper()}
        try:
            sections[name] = schema_for(SECTIONS[name]).load(value)
        except ValidationError as exc:
            key, problem = first_error(exc.messages)
            if problem == "Unknown field.":
                problem = "names no setting" + _near_miss(SECTIONS[name], key)
            raise ConfigError(f"{name}.{key}: {problem}") from None
    config = Config(**sections, base_dir=base_dir)
    _check_cross_field(config)
    return config


def _near_miss(section: type, path: str) -> str:
    """A did-you-mean for an unknown key at `path` (dotted) inside `section`."""
    tp: Any = section
    *parents, last = path.split(".")
    skip = False
    for part in parents:
        if skip:  # a mapping's key or a list's index, not a setting
            skip = False
            continue
        tp = typing.get_type_hints(tp).get(part) if dataclasses.is_dataclass(tp) else None
        origin = typing.get_origin(tp)
        if origin in (list, dict):
            tp, skip = typing.get_args(tp)[-1], True
        if tp is None:
            return ""
    if not dataclasses.is_dataclass(tp) or skip:
        return ""
    return did_you_mean(last, typing.get_type_hints(tp))


SECRET_KEYS = frozenset({"jwt_secret", "token", "password"})
MASK = "***"


def effective_settings(config: Config) -> dict[str, Any]:
    """Every setting as loaded (file + environment + defaults), secrets masked: what
    `sensorcast check-config` prints."""

    def mask(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: mask(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [mask(v) for v in value]
        if key in SECRET_KEYS and value:
            return MASK
        if key == "url" and isinstance(value, str):
            # user:password@host -> user:***@host
            return re.sub(r"(://[^:/@]*:)[^@]*@", rf"\1{MASK}@", value)
        return value

    data = {name: dataclasses.asdict(getattr(config, name)) for name in SECTIONS}
    out: dict[str, Any] = mask(data)
    out["config_dir"] = str(config.base_dir)
    return out


def _check_cross_field(config: Config) -> None:
    _check_routes(config.notifications)
    for ns, rule in config.channels.namespaces.items():
        for action in ("subscribe", "publish"):
            for role in getattr(rule, action):
                if role not in (*ROLES, ANONYMOUS):
                    raise ConfigError(
                        f"channels.namespaces.{ns}.{action}: unknown role {role!r} "
                        f"(one of {', '.join((*ROLES, ANONYMOUS))})"
                    )
    for i, api_token in enumerate(config.auth.api_tokens):
        # The prefix names anonymous sockets' identities (server.auth): never a token's.
        if api_token.name.startswith(ANONYMOUS + ":"):
            raise ConfigError(f"auth.api_tokens.{i}.name: may not start with 'anonymous:'")
    if config.database.pool_min > config.database.pool_max:
        raise ConfigError("database.pool_min: must not exceed database.pool_max")
    if not config.redis.url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("redis.url: must be redis://[:password@]host:port/db")
    url = config.database.url
    if not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise ConfigError(
            "database.url: must be sqlite:///PATH or postgresql://user:pass@host:port/db"
        )
    _check_mqtt(config.mqtt)
    if config.auth.jwt_algorithm != "HS256" and not config.auth.jwt_public_key:
        raise ConfigError(
            f"auth.jwt_public_key: required with jwt_algorithm {config.auth.jwt_algorithm}"
        )


def _check_mqtt(mqtt: MqttConfig) -> None:
    try:
        broker_address(mqtt.url)
    except TopicError as exc:
        raise ConfigError(f"mqtt.url: {exc}") from None
    if not mqtt.topics:
        raise ConfigError("mqtt.topics: at least one topic pattern is required")
    for i, pattern in enumerate(mqtt.topics):
        try:
            compile_pattern(pattern)
        except TopicError as exc:
            raise ConfigError(f"mqtt.topics.{i}: {exc}") from None
    dead_letter = mqtt.dead_letter_topic
    if any(c in dead_letter for c in "+#"):
        raise ConfigError("mqtt.dead_letter_topic: a topic to publish to has no wildcards")
    if dead_letter and any(compile_pattern(t).match(dead_letter)[0] for t in mqtt.topics):
        # The bridge would read back its own dead letters, and refuse them again.
        raise ConfigError("mqtt.dead_letter_topic: must not match one of mqtt.topics")


_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def _check_routes(notifications: NotificationsConfig) -> None:
    """Every route's channel, with its placeholders filled, must be a valid channel name."""
    where = "notifications.default_channel"
    try:
        check_channel(notifications.default_channel)
        for i, route in enumerate(notifications.routes):
            where = f"notifications.routes.{i}.channel"
            names = _PLACEHOLDER.findall(route.channel)
            if not all(name.isidentifier() for name in names):
                raise BadRequest("placeholders are {payload_key}")
            check_channel(_PLACEHOLDER.sub("x", route.channel))
    except BadRequest as exc:
        raise ConfigError(f"{where}: {exc.message}") from None
