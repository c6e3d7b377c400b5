"""Configuration: config.yaml + SENSORCAST_<SECTION>_<KEY> environment overrides.

Each section is a frozen dataclass (sections.py); its marshmallow schema is derived from the
field types (schema.py) so a setting is declared once. Loading (loading.py) never raises
anything but ConfigError (checks.py), whose message is the one line the CLI prints before
exiting. Everything is imported from here: `from server.config import Config`.
"""

from server.config.checks import ConfigError
from server.config.loading import (
    ENV_CONFIG,
    ENV_PREFIX,
    ENV_RESERVED,
    MASK,
    SECRET_KEYS,
    did_you_mean,
    effective_settings,
    load_config,
)
from server.config.sections import (
    ANONYMOUS,
    DEFAULT_ROUTES,
    ROLES,
    SECTIONS,
    ApiToken,
    AuthConfig,
    BusConfig,
    ChannelsConfig,
    ChatConfig,
    CompatConfig,
    Config,
    DatabaseConfig,
    HistoryConfig,
    LoggingConfig,
    MetricsConfig,
    MqttConfig,
    NamespaceRule,
    NotificationRoute,
    NotificationsConfig,
    RedisConfig,
    RetentionConfig,
    ServerConfig,
    SseConfig,
    WsConfig,
    setting,
)

__all__ = [
    "ANONYMOUS",
    "DEFAULT_ROUTES",
    "ENV_CONFIG",
    "ENV_PREFIX",
    "ENV_RESERVED",
    "MASK",
    "ROLES",
    "SECRET_KEYS",
    "SECTIONS",
    "ApiToken",
    "AuthConfig",
    "BusConfig",
    "ChannelsConfig",
    "ChatConfig",
    "CompatConfig",
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "HistoryConfig",
    "LoggingConfig",
    "MetricsConfig",
    "MqttConfig",
    "NamespaceRule",
    "NotificationRoute",
    "NotificationsConfig",
    "RedisConfig",
    "RetentionConfig",
    "ServerConfig",
    "SseConfig",
    "WsConfig",
    "did_you_mean",
    "effective_settings",
    "load_config",
    "setting",
]
