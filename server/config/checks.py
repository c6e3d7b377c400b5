"""ConfigError, and the checks that span settings (roles, URLs, MQTT topics, notification
routes), which the per-field validators of the schemas cannot make.
"""

from __future__ import annotations

import re

from server.channel_names import check_channel
from server.config.sections import ANONYMOUS, ROLES, Config, MqttConfig, NotificationsConfig
from server.errors import BadRequest
from server.mqtt_topics import TopicError, broker_address, compile_pattern


class ConfigError(Exception):
    """A bad setting; str() is one line naming the key and the problem."""


def check_cross_field(config: Config) -> None:
    _check_routes(config.notifications)
    for ns, rule in config.channels.namespaces.items():
        for action in ("subscribe", "publish"):
            for role in getattr(rule, action):
                if role not in (*ROLES, ANONYMOUS):
                    raise ConfigError(
                        f"channels.namespaces.{ns}.{action}: unknown role {role!r} "
                        f"(one of {', '.join((*ROLES, ANONYMOUS))})"
                    )
    if config.ws.max_backlog_bytes < config.ws.max_queue_bytes:
        raise ConfigError("ws.max_backlog_bytes: must not be less than ws.max_queue_bytes")
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
