"""Fan-out: exactly once across overlapping channels, offsets, recovery without gap or dup."""

from __future__ import annotations

from server.bus import Position
from server.keys import BUS, HUB


async def test_offsets_increase_by_one_per_publication(client, connect):
    ws = await connect("/api/v1/ws?channel=readings")
    bus = client.app[BUS]
    for i in range(5):
        await bus.publish(["readings"], "event", {"data": i})
    frames = [await ws.recv_type("event") for _ in range(5)]
    assert [f["offset"] for f in frames] == [1, 2, 3, 4, 5]
    assert [f["data"] for f in frames] == [0, 1, 2, 3, 4]
    assert {f["epoch"] for f in frames} == {(await bus.position("readings")).epoch}


async def test_overlapping_channels_deliver_once(client, connect):
    both = await connect("/api/v1/ws?channel=readings,readings:5,sensors:5")
    only_sensor = await connect("/api/v1/ws?channel=sensors:5")
    other = await connect("/api/v1/ws?channel=readings:6")
    pub = await client.app[BUS].publish(
        ["readings", "readings:5", "sensors:5"], "entity_event", {"entity_id": 5}
    )
    offsets = {"readings": 1, "readings:5": 1, "sensors:5": 1}
    frame = await both.recv_type("entity_event")
    assert (frame["channel"], frame["offset"], frame["offsets"]) == ("readings", 1, offsets)
    await both.nothing()
    frame = await only_sensor.recv_type("entity_event")
    # Named by the first channel this socket is on; offsets still list every channel.
    assert (frame["channel"], frame["offsets"]) == ("sensors:5", offsets)
    await other.nothing()
    assert client.app[HUB].stats.messages_out == 2
    assert pub.offsets == offsets


async def test_every_subscriber_gets_the_same_bytes(client, connect):
    sockets = [await connect("/api/v1/ws?channel=fan") for _ in range(5)]
    await client.app[BUS].publish(["fan"], "event", {"data": {"v": 1}})
    raw = {(await s.ws.receive(timeout=5)).data for s in sockets}
    assert len(raw) == 1


async def test_recovery_sends_missed_publications_after_subscribed_then_live(client, connect):
    bus = client.app[BUS]
    for i in range(3):
        await bus.publish(["feed"], "event", {"data": i})
    ws = await connect()
    epoch = (await bus.position("feed")).epoch
    await ws.send(
        {"type": "subscribe", "id": 1, "channel": "feed", "since": {"offset": 1, "epoch": epoch}}
    )
    sub = await ws.recv_type("subscribed")
    assert (sub["id"], sub["offset"], sub["recovered"]) == (1, 3, True)
    missed = [await ws.recv_type("event") for _ in range(2)]
    assert [(m["offset"], m["data"]) for m in missed] == [(2, 1), (3, 2)]
    await bus.publish(["feed"], "event", {"data": 3})
    assert (await ws.recv_type("event"))["offset"] == 4
    await ws.nothing()


async def test_recovery_from_another_epoch_is_not_recovered(client, connect):
    await client.app[BUS].publish(["feed"], "event", {})
    ws = await connect()
    sub = await ws.request(
        {"type": "subscribe", "channel": "feed", "since": {"offset": 0, "epoch": "old-process"}}
    )
    assert (sub["type"], sub["recovered"], sub["offset"]) == ("subscribed", False, 1)
    await ws.nothing()


async def test_gap_older_than_history_is_not_recovered(make_client):
    from tests.conftest import open_ws

    client = await make_client({"history": {"size": 2}})
    bus = client.app[BUS]
    for _ in range(5):
        await bus.publish(["feed"], "event", {})
    ws = await open_ws(client)
    sub = await ws.request(
        {
            "type": "subscribe",
            "channel": "feed",
            "since": {"offset": 1, "epoch": (await bus.position("feed")).epoch},
        }
    )
    assert (sub["recovered"], sub["offset"]) == (False, 5)
    await ws.nothing()


async def test_publications_during_recovery_are_held_and_sent_after_without_duplicates(
    client, connect
):
    bus = client.app[BUS]
    backend = bus.backend
    for i in range(3):
        await bus.publish(["feed"], "event", {"data": i})
    original = backend.recover

    async def recover_while_publishing(channel, since):
        # A live publication lands while the history is being read (as with a remote backend).
        result = await original(channel, since)
        await bus.publish(["feed"], "event", {"data": "live"})
        return result

    backend.recover = recover_while_publishing
    ws = await connect()
    await ws.send(
        {
            "type": "subscribe",
            "channel": "feed",
            "since": {"offset": 0, "epoch": (await bus.position("feed")).epoch},
        }
    )
    sub = await ws.recv_type("subscribed")
    assert sub["recovered"] is True
    got = [await ws.recv_type("event") for _ in range(4)]
    assert [g["offset"] for g in got] == [1, 2, 3, 4]
    assert got[-1]["data"] == "live"
    await ws.nothing()


async def test_recovery_never_sends_one_publication_twice_on_a_connection(client, connect):
    bus = client.app[BUS]
    await bus.publish(["a", "b"], "event", {"data": "both"})
    await bus.publish(["b"], "event", {"data": "b-only"})
    ws = await connect()
    epoch = (await bus.position("a")).epoch
    sub_a = await ws.request(
        {"type": "subscribe", "channel": "a", "since": {"offset": 0, "epoch": epoch}}
    )
    assert sub_a["recovered"] is True
    first = await ws.recv_type("event")
    assert (first["channel"], first["data"]) == ("a", "both")
    epoch = (await bus.position("b")).epoch
    sub_b = await ws.request(
        {"type": "subscribe", "channel": "b", "since": {"offset": 0, "epoch": epoch}}
    )
    assert sub_b["recovered"] is True
    only = await ws.recv_type("event")
    assert (only["channel"], only["data"], only["offset"]) == ("b", "b-only", 2)
    await ws.nothing()


async def test_live_delivery_on_one_channel_is_not_repeated_by_recovering_another(client, connect):
    bus = client.app[BUS]
    ws = await connect("/api/v1/ws?channel=a")
    await bus.publish(["a", "b"], "event", {"data": "both"})
    assert (await ws.recv_type("event"))["channel"] == "a"
    sub = await ws.request(
        {
            "type": "subscribe",
            "channel": "b",
            "since": {"offset": 0, "epoch": (await bus.position("b")).epoch},
        }
    )
    assert sub["recovered"] is True
    await ws.nothing()


async def test_position_without_since_is_the_current_offset(client, connect):
    bus = client.app[BUS]
    await bus.publish(["feed"], "event", {})
    await bus.publish(["feed"], "event", {})
    ws = await connect()
    sub = await ws.request({"type": "subscribe", "channel": "feed"})
    epoch = (await bus.position("feed")).epoch
    assert (sub["offset"], sub["epoch"]) == (2, epoch)
    assert await bus.position("feed") == Position(2, epoch)


class _BrokenTransport:
    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        raise RuntimeError("boom")

    def get_write_buffer_size(self) -> int:
        return 0


async def test_a_socket_whose_write_fails_is_dropped_and_the_others_still_receive(
    client, connect, caplog
):
    broken = await connect("/api/v1/ws?channel=feed&client_id=broken")
    healthy = await connect("/api/v1/ws?channel=feed&client_id=healthy")
    hub = client.app[HUB]
    conn = hub.clients["broken"]
    conn._transport = _BrokenTransport()
    receipt = await client.app[BUS].publish(["feed"], "event", {"data": 1})
    assert receipt.offsets == {"feed": 1}
    assert (await healthy.recv_type("event"))["data"] == 1
    assert conn.closing is True
    assert "write to broken failed" in caplog.text
    assert await broken.closed() == (4008, "write failed")
    assert hub.stats.closed_by_policy == 1


class _CountingTransport:
    def __init__(self, real):
        self.real = real
        self.writes = 0

    def __getattr__(self, name):
        return getattr(self.real, name)

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.real.write(data)


async def test_frames_queued_in_one_loop_iteration_share_one_write(client, connect):
    ws = await connect("/api/v1/ws?channel=feed&client_id=counted")
    conn = client.app[HUB].clients["counted"]
    counting = conn._transport = _CountingTransport(conn._transport)
    bus = client.app[BUS]
    for i in range(50):
        await bus.publish(["feed"], "event", {"data": i})  # no await yields to the loop here
    got = [(await ws.recv_type("event"))["data"] for _ in range(50)]
    assert got == list(range(50))
    assert counting.writes == 1


async def test_a_large_backlog_is_written_without_waiting_for_the_loop(client, connect):
    ws = await connect("/api/v1/ws?channel=feed&client_id=counted")
    conn = client.app[HUB].clients["counted"]
    counting = conn._transport = _CountingTransport(conn._transport)
    bus = client.app[BUS]
    for i in range(10):
        await bus.publish(["feed"], "event", {"data": {"i": i, "pad": "p" * 4000}})
    # ~40 KB pending would pass the 16 KiB flush size: written in 16 KiB+ pieces right away.
    assert counting.writes >= 2
    got = [(await ws.recv_type("event"))["data"]["i"] for _ in range(10)]
    assert got == list(range(10))
