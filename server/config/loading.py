"""Loading: config.yaml, then SENSORCAST_<SECTION>_<KEY> environment overrides, each
section through its schema into Config, then the checks across settings; an unknown name
gets a "did you mean". Also what `sensorcast check-config` prints of the result.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
import yaml
from marshmallow import ValidationError

from server.config.checks import ConfigError, check_cross_field
from server.config.schema import first_error, schema_for
from server.config.sections import SECTIONS, Config

ENV_PREFIX = "SENSORCAST_"
# Reserved for the test suite's own knobs (database URLs and the like).
ENV_RESERVED = ("SENSORCAST_TEST_",)
# Not a setting: which config file to read (the CLI's config discovery).
ENV_CONFIG = "SENSORCAST_CONFIG"


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
    check_cross_field(config)
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
