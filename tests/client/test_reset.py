"""The server's unasked `subscribed {recovered: false}` (its stream on a channel restarted
without what was in between, SPEC §7 outages) reaches the consumer as a gap."""

from __future__ import annotations

from server.bus import Position
from server.client import Client
from server.keys import HUB
from tests.client.conftest import LiveServer
from tests.client.test_client import CHANNEL, publish_rest, take


async def test_a_reset_from_the_server_is_a_gap_and_moves_the_position(live: LiveServer) -> None:
    events: list[tuple[str, dict]] = []
    client = Client(live.url, live.token(), on_status=lambda e, d: events.append((e, d)))
    async with client:
        sub = client.subscribe(CHANNEL)
        await sub.ready()
        await publish_rest(live, 1)
        await take(sub, 1)
        assert live.app is not None
        live.app[HUB].on_reset(CHANNEL, Position(7, "new-epoch"))
        gap = (await take(sub, 1))[0]
        assert (gap["type"], gap["recovered"], gap["offset"]) == ("subscribed", False, 7)
        assert sub.position is not None
        assert (sub.position.offset, sub.position.epoch) == (7, "new-epoch")
        assert sub.gaps == 1
        assert ("gap", {"channel": CHANNEL}) in events
