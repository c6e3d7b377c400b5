"""The bus Backend contract, over both backends: offsets, epochs, history, recovery,
listening, presence."""

from __future__ import annotations

import pytest

from server.bus import Position
from server.bus.presence import Member
from tests.bus.conftest import default_rule


async def test_offsets_increase_by_one_per_channel_and_every_publication_is_delivered(make_bus):
    h = await make_bus()
    bus = h.bus
    await bus.listen("a")
    await bus.listen("b")
    a1 = await bus.publish(["a"], "event", {"data": 1})
    b1 = await bus.publish(["b"], "event", {"data": 2})
    both = await bus.publish(["a", "b"], "event", {"data": 3})
    assert (a1.offsets, b1.offsets, both.offsets) == ({"a": 1}, {"b": 1}, {"a": 2, "b": 2})
    got = await h.received(3)
    assert [(p.body, p.offsets) for p in got] == [
        ({"data": 1}, {"a": 1}),
        ({"data": 2}, {"b": 1}),
        ({"data": 3}, {"a": 2, "b": 2}),
    ]
    a = await bus.position("a")
    assert a == Position(2, both.epochs["a"])
    assert both.epochs["a"] == a1.epochs["a"] != both.epochs["b"]


async def test_a_channel_has_its_epoch_before_its_first_publication(make_bus):
    h = await make_bus()
    before = await h.bus.position("new")
    assert before.offset == 0
    assert before.epoch
    pub = await h.bus.publish(["new"], "event", {})
    assert (pub.offsets["new"], pub.epochs["new"]) == (1, before.epoch)


async def test_duplicate_channels_in_one_publication_count_once(make_bus):
    h = await make_bus()
    pub = await h.bus.publish(["a", "a", "b"], "event", {})
    assert pub.channels == ("a", "b")
    assert pub.offsets == {"a": 1, "b": 1}


async def test_a_publication_on_several_listened_channels_is_delivered_once(make_bus):
    h = await make_bus()
    for channel in ("x", "y", "z"):
        await h.bus.listen(channel)
    await h.bus.publish(["x", "y", "z"], "event", {"n": 1})
    await h.bus.publish(["z"], "event", {"n": 2})
    await h.fence()
    assert [p.body["n"] for p in h.got] == [1, 2]


async def test_recover_returns_exactly_the_missed_publications_in_order(make_bus):
    h = await make_bus()
    pubs = [await h.bus.publish(["a"], "event", {"data": i}) for i in range(5)]
    epoch = pubs[0].epochs["a"]
    result = await h.bus.recover("a", Position(2, epoch))
    assert result.recovered is True
    assert [(p.body, p.offsets) for p in result.publications] == [
        (p.body, p.offsets) for p in pubs[2:]
    ]
    assert result.position == Position(5, epoch)
    top = await h.bus.recover("a", Position(5, epoch))
    assert (top.recovered, top.publications) == (True, [])


@pytest.mark.parametrize(("since_offset", "epoch_ok"), [(0, False), (9, True)])
async def test_recover_from_an_unknown_position_is_not_recovered(make_bus, since_offset, epoch_ok):
    h = await make_bus()
    pub = await h.bus.publish(["a"], "event", {})
    epoch = pub.epochs["a"] if epoch_ok else "another-epoch"
    result = await h.bus.recover("a", Position(since_offset, epoch))
    assert (result.recovered, result.publications, result.position.offset) == (False, [], 1)


async def test_a_gap_older_than_the_history_size_is_not_recovered(make_bus):
    h = await make_bus(rule=default_rule(size=3))
    pubs = [await h.bus.publish(["a"], "event", {"data": i}) for i in range(6)]
    epoch = pubs[0].epochs["a"]
    assert (await h.bus.recover("a", Position(1, epoch))).recovered is False
    kept = await h.bus.recover("a", Position(3, epoch))
    assert kept.recovered is True
    assert [p.offsets["a"] for p in kept.publications] == [4, 5, 6]


async def test_history_is_capped_in_bytes(make_bus):
    h = await make_bus(rule=default_rule(size=100, max_bytes=2000))
    pubs = [await h.bus.publish(["a"], "event", {"pad": "x" * 300, "i": i}) for i in range(20)]
    epoch = pubs[0].epochs["a"]
    assert (await h.bus.recover("a", Position(0, epoch))).recovered is False
    recent = await h.bus.recover("a", Position(18, epoch))
    assert [p.body["i"] for p in recent.publications] == [18, 19]


async def test_expired_history_is_not_recovered(make_bus, monkeypatch):
    h = await make_bus(rule=default_rule(size=10, ttl=60))
    pubs = [await h.bus.publish(["a"], "event", {}) for _ in range(2)]
    import time as real_time

    class Later:
        @staticmethod
        def time() -> float:
            return real_time.time() + 61

        @staticmethod
        def monotonic() -> float:
            return real_time.monotonic() + 61

    monkeypatch.setattr("server.bus.local.time", Later)
    monkeypatch.setattr("server.bus.redis_history.time", Later)
    result = await h.bus.recover("a", Position(0, pubs[0].epochs["a"]))
    assert result.recovered is False
    # Offsets survive: a new publication continues the sequence.
    assert (await h.bus.publish(["a"], "event", {})).offsets == {"a": 3}


async def test_a_channel_without_history_keeps_offsets_but_nothing_to_recover(make_bus):
    h = await make_bus()
    pub = await h.bus.publish(["quiet"], "event", {})
    await h.bus.publish(["quiet"], "event", {})
    result = await h.bus.recover("quiet", Position(0, pub.epochs["quiet"]))
    assert (result.recovered, result.position.offset) == (False, 2)


async def test_publish_many_is_one_ordered_batch_with_one_timestamp(make_bus):
    h = await make_bus()
    await h.bus.listen("a")
    await h.bus.listen("b")
    pubs = await h.bus.publish_many(
        [(["a"], "event", {"data": 1}), (["a", "b"], "event", {"data": 2}), (["b"], "event", {})]
    )
    assert [p.offsets for p in pubs] == [{"a": 1}, {"a": 2, "b": 1}, {"b": 2}]
    assert len({p.timestamp for p in pubs}) == 1
    got = await h.received(3)
    assert [p.offsets for p in got] == [p.offsets for p in pubs]
    assert await h.bus.publish_many([]) == []


async def test_a_channel_no_longer_listened_to_is_not_delivered(make_bus, kind):
    if kind == "local":
        pytest.skip("in one process every publication reaches the hub, which drops it")
    h = await make_bus()
    await h.bus.listen("gone")
    h.bus.unlisten("gone")
    await h.bus.publish(["gone"], "event", {})
    await h.fence()
    assert h.got == []


async def test_presence_announces_first_and_last_socket_and_lists_members(make_bus):
    h = await make_bus()
    bus = h.bus
    await bus.listen("chat:r")
    alice = bus.count_in("chat:r", "alice", "Alice")
    assert alice is not None
    await bus.announce("chat:r", alice, joined=True)
    assert bus.count_in("chat:r", "alice", "Alice") is None  # a second tab: no announcement
    assert [(m.user_id, m.sockets) for m in await bus.members("chat:r")] == [("alice", 2)]
    assert bus.count_out("chat:r", "alice") is None
    last = bus.count_out("chat:r", "alice")
    assert last is not None
    await bus.announce("chat:r", last, joined=False)
    await h.fence()
    assert [(p.type, p.body, p.exclude, p.ephemeral) for p in h.got] == [
        ("user_joined", {"data": {"user_id": "alice", "username": "Alice"}}, "alice", True),
        ("user_left", {"data": {"user_id": "alice", "username": "Alice"}}, "alice", True),
    ]
    assert await bus.members("chat:r") == []
    assert "chat:r" not in await bus.presence_channels()


async def test_ephemeral_publications_have_no_offset(make_bus):
    h = await make_bus()
    await h.bus.listen("chat:r")
    await h.bus.publish_ephemeral("chat:r", "typing", {"data": {"is_typing": True}}, "bob")
    (pub,) = await h.received(1)
    assert (pub.type, pub.ephemeral, pub.exclude, pub.offsets) == ("typing", True, "bob", {})
    assert (await h.bus.position("chat:r")).offset == 0


async def test_members_are_listed_by_presence_channel(make_bus):
    h = await make_bus()
    member = h.bus.count_in("chat:a", "u1", "U1")
    assert isinstance(member, Member)
    await h.bus.announce("chat:a", member, joined=True)
    channels = await h.bus.presence_channels()
    assert {ch: [m.user_id for m in ms] for ch, ms in channels.items()} == {"chat:a": ["u1"]}
