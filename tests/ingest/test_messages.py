"""Topic patterns, broker URLs, the mqtt config section and one message's parse: no broker."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from server.config import ConfigError
from server.ingest.messages import Refusal, parse_message
from server.mqtt_topics import TopicError, broker_address, compile_pattern
from tests.conftest import make_config

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
PATTERNS = (compile_pattern("sensors/{sensor_id}/readings"), compile_pattern("gw/+/bulk/#"))


def test_a_pattern_subscribes_with_plus_and_reads_the_sensor_level() -> None:
    pattern = PATTERNS[0]
    assert pattern.filter == "sensors/+/readings"
    assert pattern.match("sensors/7/readings") == (True, "7")
    assert pattern.match("sensors/7/other") == (False, None)
    assert pattern.match("sensors/7/readings/extra") == (False, None)
    assert PATTERNS[1].match("gw/a/bulk/x/y") == (True, None)
    assert PATTERNS[1].match("gw/a/other") == (False, None)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "1 to 65535 bytes"),
        ("a/{sensor_id}/{sensor_id}", "may stand once"),
        ("a/x{sensor_id}", "whole level"),
        ("a/{device}", "whole level"),
        ("a/#/b", "'#' must be the last level"),
        ("a/b+", "whole levels"),
    ],
)
def test_bad_patterns_say_why(text: str, problem: str) -> None:
    with pytest.raises(TopicError, match=problem):
        compile_pattern(text)


def test_broker_urls() -> None:
    plain = broker_address("mqtt://127.0.0.1")
    assert (plain.host, plain.port, plain.tls) == ("127.0.0.1", 1883, False)
    tls = broker_address("mqtts://dev%40x:p%2Fw@broker.local:9883")
    assert (tls.host, tls.port, tls.tls, tls.username, tls.password) == (
        "broker.local",
        9883,
        True,
        "dev@x",
        "p/w",
    )
    for bad in ("http://x", "mqtt://", "mqtt://h:99999"):
        with pytest.raises(TopicError):
            broker_address(bad)


@pytest.mark.parametrize(
    ("mqtt", "message"),
    [
        ({"url": "tcp://x"}, "mqtt.url: must be mqtt://host:port"),
        ({"topics": []}, "mqtt.topics: at least one"),
        ({"topics": ["a/#/b"]}, "mqtt.topics.0: 'a/#/b': '#' must be the last level"),
        ({"qos": 3}, "mqtt.qos"),
        ({"dead_letter_topic": "dead/#"}, "mqtt.dead_letter_topic: a topic to publish"),
        ({"dead_letter_topic": "sensors/dead/readings"}, "mqtt.dead_letter_topic: must not match"),
        ({"max_batch": 0}, "mqtt.max_batch"),
        ({"bogus": 1}, "mqtt.bogus: names no setting"),
    ],
)
def test_bad_mqtt_config_is_one_line_naming_the_key(
    tmp_path: Path, mqtt: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(")):
        make_config(tmp_path, {"mqtt": mqtt})


def test_payloads_as_rest_bodies_with_the_topic_naming_the_sensor() -> None:
    one = parse_message("sensors/3/readings", b'{"values": {"t": 1.5}}', PATTERNS, NOW)
    assert one == [(3, NOW, {"t": 1.5}, "2024-05-01T12:00:00.000Z")]
    flat = parse_message("sensors/3/readings", b'{"t": 1, "h": 2}', PATTERNS, NOW)
    assert flat == [(3, NOW, {"t": 1.0, "h": 2.0}, "2024-05-01T12:00:00.000Z")]
    batch = parse_message(
        "sensors/3/readings",
        b'[{"t": 1, "timestamp": "2024-05-01T11:00:00.000Z"}, {"sensor_id": 3, "t": 2}]',
        PATTERNS,
        NOW,
    )
    assert isinstance(batch, list)
    assert [r[2] for r in batch] == [{"t": 1.0}, {"t": 2.0}]
    assert batch[0][3] == "2024-05-01T11:00:00.000Z"
    named = parse_message("gw/a/bulk", b'{"sensor_id": 9, "t": 1}', PATTERNS, NOW)
    assert isinstance(named, list)
    assert named[0][0] == 9


@pytest.mark.parametrize(
    ("topic", "payload", "refusal"),
    [
        ("sensors/3/readings", b"\xff\xfe", Refusal("not_json", None)),
        ("sensors/x/readings", b'{"t": 1}', Refusal("bad_topic", None)),
        ("sensors/0/readings", b'{"t": 1}', Refusal("bad_topic", None)),
        ("elsewhere", b'{"t": 1}', Refusal("bad_topic", None)),
        ("sensors/3/readings", b"[]", Refusal("bad_shape", {"_schema": ["The batch is empty."]})),
        (
            "sensors/3/readings",
            b"42",
            Refusal("bad_shape", {"_schema": ["A reading is a JSON object."]}),
        ),
        (
            "sensors/3/readings",
            b'[{"t": 1}, {"sensor_id": 4, "t": 1}]',
            Refusal("bad_shape", {"1": ["Names sensor 4, but the topic names 3."]}),
        ),
        ("gw/a/bulk", b'{"t": 1}', Refusal("bad_shape", {"sensor_id": ["Missing."]})),
        (
            "sensors/3/readings",
            b"[" + b",".join([b'{"t":1}'] * 10_001) + b"]",
            Refusal("too_large", None),
        ),
    ],
)
def test_bad_messages_are_refused_with_a_cause(
    topic: str, payload: bytes, refusal: Refusal
) -> None:
    got = parse_message(topic, payload, PATTERNS, NOW)
    assert isinstance(got, Refusal)
    assert got.cause == refusal.cause
    if refusal.details is not None:
        assert got.details == refusal.details
