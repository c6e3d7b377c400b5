"""`channels.namespaces.<ns>.history*`: history set or turned off per namespace, with a
count, a ttl and a byte cap, falling back to the `history` section."""

from __future__ import annotations

from pathlib import Path

from server.bus import HistoryRule
from server.channels import ChannelPolicy
from server.keys import BUS
from tests.conftest import make_config, open_ws


def test_namespace_history_overrides_the_history_section(tmp_path: Path):
    config = make_config(
        tmp_path,
        {
            "history": {"size": 50, "ttl": 120, "max_bytes": 0},
            "channels": {
                "namespaces": {
                    "default": {},
                    "readings": {"history_size": 5, "history_max_bytes": 4096},
                    "quiet": {"history": False},
                    "long": {"history_ttl": 0},
                }
            },
        },
    )
    policy = ChannelPolicy(config.channels, config.history)
    assert policy.history_rule("readings:7") == HistoryRule(5, 120, 4096)
    assert policy.history_rule("quiet") == HistoryRule(0, 120, 0)
    assert policy.history_rule("long:x") == HistoryRule(50, 0, 0)
    assert policy.history_rule("other") == HistoryRule(50, 120, 0)


async def test_a_namespace_without_history_cannot_be_recovered(make_client):
    client = await make_client(
        {"channels": {"namespaces": {"default": {}, "quiet": {"history": False}}}}
    )
    ws = await open_ws(client, "/api/v1/ws?channel=quiet,loud")
    bus = client.app[BUS]
    await bus.publish(["quiet", "loud"], "event", {"data": 1})
    await ws.recv_type("event")
    for channel, recovered in (("quiet", False), ("loud", True)):
        epoch = (await bus.position(channel)).epoch
        again = await open_ws(client, "/api/v1/ws?channel=general")
        since = {"offset": 0, "epoch": epoch}
        await again.send({"type": "subscribe", "channel": channel, "since": since})
        assert (await again.recv_type("subscribed"))["recovered"] is recovered
