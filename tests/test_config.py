"""config.yaml + SENSORCAST_* environment through the real loader, load_config()."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from server.config import ApiToken, ConfigError, NamespaceRule, load_config

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "config.yaml"


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_data(tmp_path: Path, data: Any) -> Path:
    return write(tmp_path, yaml.safe_dump(data))


def config_error(path: Path | None, environ: dict[str, str] | None = None) -> str:
    """The ConfigError message loading `path` with `environ` gives; it must be one line."""
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=environ or {})
    message = str(info.value)
    assert message
    assert "\n" not in message, message
    return message


# -- the shipped file ----------------------------------------------------------------------


def test_shipped_config_loads_with_documented_defaults():
    config = load_config(SHIPPED, environ={})

    assert config.server.host == "127.0.0.1"
    assert config.server.port == 8000
    assert config.server.shutdown_timeout == 10
    assert config.server.allowed_origins == ["*"]
    assert config.server.max_body_bytes == 8 * 1024 * 1024
    assert config.database.url == "sqlite:///var/sensorcast.db"
    assert config.database.auto_migrate is True
    assert config.bus.backend == "local"
    assert config.ws.heartbeat == 20
    assert config.ws.max_message_bytes == 65536
    assert config.ws.max_queue_bytes == 1048576
    assert config.ws.rate_limit == 100
    assert config.ws.rate_burst == 200
    assert config.ws.duplicate_client_id == "reject"
    assert config.ws.compression is False
    assert config.auth.allow_anonymous is True
    assert config.auth.anonymous_writes is False
    assert config.auth.jwt_algorithm == "HS256"
    assert config.auth.jwt_leeway == 0
    assert config.auth.api_tokens == []


def test_shipped_config_default_namespace_lets_everyone_subscribe_and_no_client_publish():
    config = load_config(SHIPPED, environ={})

    default = config.channels.namespaces["default"]
    assert sorted(default.subscribe) == ["admin", "anonymous", "device", "service", "user"]
    assert default.publish == []
    assert config.channels.rule("sensors") is default


def test_shipped_config_equals_built_in_defaults_except_namespaces(tmp_path: Path):
    shipped = load_config(SHIPPED, environ={})
    empty = load_config(write(tmp_path, ""), environ={})

    sections = ("server", "database", "bus", "history", "ws", "auth", "chat", "notifications")
    for section in (*sections, "compat", "retention", "logging"):
        assert getattr(shipped, section) == getattr(empty, section), section
    assert shipped.channels.namespaces["chat"] == empty.channels.namespaces["chat"]


# -- environment overrides -------------------------------------------------------------------


def test_env_port_overrides_file(tmp_path: Path):
    path = write(tmp_path, "server: {port: 8100}\n")

    config = load_config(path, environ={"SENSORCAST_SERVER_PORT": "9000"})

    assert config.server.port == 9000


def test_env_override_keeps_other_keys_of_the_section(tmp_path: Path):
    path = write(tmp_path, "ws: {rate_limit: 5, heartbeat: 7}\n")

    config = load_config(path, environ={"SENSORCAST_WS_MAX_QUEUE_BYTES": "4096"})

    assert config.ws.max_queue_bytes == 4096
    assert config.ws.rate_limit == 5
    assert config.ws.heartbeat == 7


def test_env_override_without_a_config_file():
    config = load_config(None, environ={"SENSORCAST_WS_COMPRESSION": "true"})

    assert config.ws.compression is True
    assert config.server.port == 8000


def test_env_list_is_given_as_json():
    config = load_config(None, environ={"SENSORCAST_SERVER_ALLOWED_ORIGINS": '["https://a"]'})

    assert config.server.allowed_origins == ["https://a"]


def test_env_mapping_is_given_as_json():
    env = {
        "SENSORCAST_CHANNELS_NAMESPACES": '{"chat": {"subscribe": ["user"], "publish": ["user"]}}'
    }

    config = load_config(None, environ=env)

    assert config.channels.namespaces == {
        "chat": NamespaceRule(subscribe=["user"], publish=["user"], history=True)
    }


def test_env_list_of_api_tokens_is_given_as_json():
    env = {
        "SENSORCAST_AUTH_API_TOKENS": '[{"name": "billing", "token": "0123456789abcdef", '
        '"role": "service"}]'
    }

    config = load_config(None, environ=env)

    assert config.auth.api_tokens == [
        ApiToken(name="billing", token="0123456789abcdef", role="service")
    ]


def test_env_database_url_override():
    config = load_config(None, environ={"SENSORCAST_DATABASE_URL": "sqlite:///other.db"})

    assert config.database.url == "sqlite:///other.db"


def test_env_test_prefix_is_reserved_and_ignored():
    config = load_config(None, environ={"SENSORCAST_TEST_ANYTHING": "whatever", "HOME": "/x"})

    assert config.server.port == 8000


# -- bad config: ConfigError, one line naming the key ------------------------------------


def test_unknown_key_in_file_names_it(tmp_path: Path):
    message = config_error(write(tmp_path, "ws: {max_queue_byte: 1}\n"))

    assert message == "ws.max_queue_byte: names no setting (did you mean max_queue_bytes?)"


def test_unknown_section_in_file_names_it(tmp_path: Path):
    message = config_error(write(tmp_path, "wss: {heartbeat: 1}\n"))

    assert message.startswith("wss: names no setting")


def test_unknown_env_key_names_the_variable():
    message = config_error(None, {"SENSORCAST_SERVER_PROT": "9000"})

    assert message.startswith("SENSORCAST_SERVER_PROT:")
    assert "server.prot" in message
    assert "names no setting" in message


def test_unknown_env_section_names_the_variable():
    message = config_error(None, {"SENSORCAST_NOPE_KEY": "1"})

    assert message.startswith("SENSORCAST_NOPE_KEY: names no setting")


def test_bad_value_type_names_the_key(tmp_path: Path):
    message = config_error(write(tmp_path, "server: {port: abc}\n"))

    assert message == "server.port: Not a valid integer."


def test_bad_env_value_names_the_key():
    message = config_error(None, {"SENSORCAST_WS_RATE_LIMIT": "abc"})

    assert message == "ws.rate_limit: Not a valid number."


def test_bool_is_not_an_integer(tmp_path: Path):
    message = config_error(write(tmp_path, "server: {port: true}\n"))

    assert message == "server.port: Not a valid integer."


def test_fractional_integer_setting_is_refused(tmp_path: Path):
    message = config_error(write(tmp_path, "server: {port: 80.5}\n"))

    assert message.startswith("server.port:")


def test_out_of_range_value_names_the_key(tmp_path: Path):
    message = config_error(write(tmp_path, "server: {port: 70000}\n"))

    assert message.startswith("server.port: Must be greater than or equal to 0")


def test_below_minimum_names_the_key(tmp_path: Path):
    message = config_error(write(tmp_path, "server: {max_body_bytes: 10}\n"))

    assert message == "server.max_body_bytes: Must be greater than or equal to 1024."


def test_infinite_float_is_refused(tmp_path: Path):
    message = config_error(write(tmp_path, "ws: {heartbeat: .inf}\n"))

    assert message.startswith("ws.heartbeat:")


def test_bad_choice_names_the_key_and_the_choices(tmp_path: Path):
    message = config_error(write(tmp_path, "ws: {duplicate_client_id: maybe}\n"))

    assert message == "ws.duplicate_client_id: Must be one of: reject, replace."


def test_null_value_names_the_key(tmp_path: Path):
    message = config_error(write(tmp_path, "server: {host: null}\n"))

    assert message == "server.host: Field may not be null."


def test_env_list_not_json_names_the_variable():
    message = config_error(None, {"SENSORCAST_SERVER_ALLOWED_ORIGINS": "https://a"})

    assert message == (
        "SENSORCAST_SERVER_ALLOWED_ORIGINS: server.allowed_origins must be given as JSON"
    )


def test_env_mapping_not_json_names_the_variable():
    message = config_error(None, {"SENSORCAST_CHANNELS_NAMESPACES": "{chat"})

    assert message.startswith("SENSORCAST_CHANNELS_NAMESPACES: channels.namespaces")


def test_env_json_of_the_wrong_shape_names_the_key():
    message = config_error(None, {"SENSORCAST_SERVER_ALLOWED_ORIGINS": '"https://a"'})

    assert message == "server.allowed_origins: Not a valid list."


def test_list_item_error_names_its_index(tmp_path: Path):
    path = write(tmp_path, "auth: {api_tokens: [{name: a, token: ''}]}\n")

    message = config_error(path)

    assert message == "auth.api_tokens.0.token: Shorter than minimum length 1."


def test_yaml_syntax_error_mentions_the_line(tmp_path: Path):
    path = write(tmp_path, "server:\n  port: 1\n bad: [\n")

    message = config_error(path)

    assert message == f"{path}: not valid YAML at line 3"


def test_missing_file_is_a_config_error(tmp_path: Path):
    message = config_error(tmp_path / "nope.yaml")

    assert message.startswith(f"{tmp_path / 'nope.yaml'}: cannot read config file")


@pytest.mark.parametrize("text", ["- server\n- ws\n", "just a string\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str):
    path = write(tmp_path, text)

    message = config_error(path)

    assert message == f"{path}: the top level must be a mapping of sections"


def test_section_must_be_a_mapping(tmp_path: Path):
    message = config_error(write(tmp_path, "ws: [1, 2]\n"))

    assert message == "ws: must be a mapping of settings"


def test_empty_section_keeps_defaults(tmp_path: Path):
    config = load_config(write(tmp_path, "server:\n"), environ={})

    assert config.server.port == 8000


def test_unknown_role_in_namespaces_names_it(tmp_path: Path):
    path = write_data(tmp_path, {"channels": {"namespaces": {"chat": {"subscribe": ["root"]}}}})

    message = config_error(path)

    assert message.startswith("channels.namespaces.chat.subscribe: unknown role 'root'")


def test_unknown_publish_role_in_namespaces_names_it(tmp_path: Path):
    path = write_data(tmp_path, {"channels": {"namespaces": {"chat": {"publish": ["users"]}}}})

    message = config_error(path)

    assert message.startswith("channels.namespaces.chat.publish: unknown role 'users'")


def test_unknown_key_inside_a_namespace_names_the_real_key(tmp_path: Path):
    path = write_data(tmp_path, {"channels": {"namespaces": {"chat": {"subscrib": ["user"]}}}})

    message = config_error(path)

    assert message == (
        "channels.namespaces.chat.subscrib: names no setting (did you mean subscribe?)"
    )


@pytest.mark.parametrize(
    "url", ["mysql://user@host/db", "sqlite://var/x.db", "var/sensorcast.db", "redis://x"]
)
def test_bad_database_url_scheme_names_the_key(tmp_path: Path, url: str):
    message = config_error(write_data(tmp_path, {"database": {"url": url}}))

    assert message.startswith("database.url: must be sqlite:///PATH or postgresql://")


def test_pool_min_over_pool_max_names_the_key(tmp_path: Path):
    path = write_data(tmp_path, {"database": {"pool_min": 5, "pool_max": 2}})

    message = config_error(path)

    assert message == "database.pool_min: must not exceed database.pool_max"


def test_asymmetric_jwt_needs_a_public_key(tmp_path: Path):
    message = config_error(write_data(tmp_path, {"auth": {"jwt_algorithm": "RS256"}}))

    assert message == "auth.jwt_public_key: required with jwt_algorithm RS256"


# -- relative paths ---------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    conf_dir = tmp_path / "etc" / "sensorcast"
    path = write(conf_dir, "database: {url: 'sqlite:///data/x.db'}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    config = load_config("../etc/sensorcast/config.yaml", environ={})

    assert config.base_dir == conf_dir.resolve()
    assert config.var_dir == conf_dir.resolve() / "var"
    assert config.resolve("data/x.db") == conf_dir.resolve() / "data" / "x.db"
    assert config.resolve("/srv/x.db") == Path("/srv/x.db")
    assert path.parent.resolve() == config.base_dir


def test_without_a_file_base_dir_is_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)

    config = load_config(None, environ={})

    assert config.base_dir == Path.cwd()
    assert config.var_dir == Path.cwd() / "var"


def test_notification_route_to_an_invalid_channel_is_refused(tmp_path: Path):
    routes = [{"event": "*", "channel": "user:{user_id}"}, {"event": "x", "channel": "Bad:{id}"}]
    path = write_data(tmp_path, {"notifications": {"routes": routes}})

    message = config_error(path)

    assert message.startswith("notifications.routes.1.channel: invalid channel name 'Bad:x'")


def test_notification_route_placeholder_must_name_a_payload_key(tmp_path: Path):
    path = write_data(tmp_path, {"notifications": {"routes": [{"channel": "user:{a-b}"}]}})

    assert config_error(path) == "notifications.routes.0.channel: placeholders are {payload_key}"


def test_notification_route_needs_a_channel(tmp_path: Path):
    path = write_data(tmp_path, {"notifications": {"routes": [{"event": "x"}]}})

    assert config_error(path).startswith("notifications.routes.0.channel:")


def test_chat_limits_are_checked(tmp_path: Path):
    path = write_data(tmp_path, {"chat": {"max_message_length": 0}})

    assert config_error(path).startswith("chat.max_message_length:")
