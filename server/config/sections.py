"""The settings: one frozen dataclass per config.yaml section, each field with its default
and check (`setting`), from which server/config/schema.py derives the marshmallow schema.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from marshmallow import validate

ROLES = ("admin", "service", "user", "device")
ANONYMOUS = "anonymous"


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
    # The outbound budget: past it a socket is lagging; a publication bigger than this is
    # refused at publish time (413 too_large), since it could never fit.
    max_queue_bytes: int = setting(1024 * 1024, validate.Range(min=1024))
    # Seconds a socket may stay over max_queue_bytes without draining: then 4008.
    max_lag: float = setting(5.0, validate.Range(min=1, max=9))
    # Outbound bytes past which a socket is dropped at once, however fast it drains.
    max_backlog_bytes: int = setting(16 * 1024 * 1024, validate.Range(min=1024))
    # Channels one socket may be subscribed to at once; 0 = no limit.
    max_subscriptions: int = setting(128, validate.Range(min=0))
    # Channels (with no other subscriber) that anonymous sockets may open, all together.
    max_anonymous_channels: int = setting(10000, validate.Range(min=0))
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
