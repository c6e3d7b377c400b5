"""MQTT topic patterns and broker URLs: syntax only, so config can check them (a leaf).

A pattern is an MQTT topic filter in which one whole level may be `{sensor_id}`:
`sensors/{sensor_id}/readings` subscribes to `sensors/+/readings` and reads the sensor
id from the second level of each message's topic. `+` and `#` are allowed elsewhere
(`#` last only, as MQTT says).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

SENSOR_LEVEL = "{sensor_id}"
SCHEMES = {"mqtt": (1883, False), "mqtts": (8883, True)}


class TopicError(ValueError):
    """A bad pattern or URL; str() says what is wrong."""


@dataclass(frozen=True, slots=True)
class Pattern:
    text: str
    # The filter given to the broker: {sensor_id} as `+`.
    filter: str
    levels: tuple[str, ...]
    # Which level holds the sensor id, or None (the payload must name it).
    sensor_level: int | None

    def match(self, topic: str) -> tuple[bool, str | None]:
        """(whether the topic matches, the text of its sensor level if the pattern has one)."""
        parts = topic.split("/")
        sensor: str | None = None
        for i, level in enumerate(self.levels):
            if level == "#":
                return True, sensor
            if i >= len(parts):
                return False, None
            if i == self.sensor_level:
                sensor = parts[i]
            elif level != "+" and level != parts[i]:
                return False, None
        if len(parts) != len(self.levels):
            return False, None
        return True, sensor


def compile_pattern(text: str) -> Pattern:
    if not text or len(text.encode()) > 65535:
        raise TopicError("a topic pattern is 1 to 65535 bytes")
    levels = tuple(text.split("/"))
    sensor_level = None
    for i, level in enumerate(levels):
        if level == SENSOR_LEVEL:
            if sensor_level is not None:
                raise TopicError(f"{text!r}: {SENSOR_LEVEL} may stand once")
            sensor_level = i
        elif "{" in level or "}" in level:
            raise TopicError(f"{text!r}: {SENSOR_LEVEL} must be a whole level, alone")
        elif level == "#" and i != len(levels) - 1:
            raise TopicError(f"{text!r}: '#' must be the last level")
        elif level not in ("+", "#") and ("+" in level or "#" in level):
            raise TopicError(f"{text!r}: '+' and '#' must be whole levels")
    broker_filter = "/".join("+" if level == SENSOR_LEVEL else level for level in levels)
    return Pattern(text, broker_filter, levels, sensor_level)


@dataclass(frozen=True, slots=True)
class Broker:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None


def broker_address(url: str) -> Broker:
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise TopicError("must be mqtt://host:port or mqtts://host:port")
    default_port, tls = SCHEMES[parts.scheme]
    try:
        port = parts.port or default_port
    except ValueError:
        raise TopicError("the port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise TopicError("names no host")
    return Broker(
        parts.hostname,
        port,
        tls,
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password else None,
    )
