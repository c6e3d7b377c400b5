"""What only the in-memory backend does: eviction of idle channels, and the payload cache."""

from __future__ import annotations

from server import codec
from server.bus import Bus, HistoryRule, Position
from server.bus.local import LocalBackend


async def started(backend: LocalBackend) -> Bus:
    bus = Bus(backend)
    await bus.start()
    return bus


async def test_an_idle_channel_is_evicted_and_comes_back_with_a_new_epoch():
    now = 500.0  # the backend's injected clock: history ages without patching time
    backend = LocalBackend(history_rule=lambda ch: HistoryRule(10, 60), clock=lambda: now)
    bus = await started(backend)
    old = await bus.publish(["idle"], "event", {})
    await bus.listen("kept")
    kept = await bus.publish(["kept"], "event", {})
    assert backend.trim() == 0  # history still live: nothing evicted
    assert set(backend.channels) == {"idle", "kept"}
    now += 59
    assert backend.trim() == 0  # 59 s old: still live
    now += 2
    assert backend.trim() == 2
    # `kept` has a listener: its state (and epoch) stays; `idle` is gone.
    assert set(backend.channels) == {"kept"}
    assert (await bus.position("kept")).epoch == kept.epochs["kept"]
    back = await bus.position("idle")
    assert back.offset == 0
    assert back.epoch != old.epochs["idle"]
    result = await bus.recover("idle", Position(1, old.epochs["idle"]))
    assert result.recovered is False


async def test_a_channel_without_history_is_evicted_once_nobody_listens():
    backend = LocalBackend(history_rule=lambda ch: HistoryRule(0, 0))
    bus = await started(backend)
    await bus.listen("live")
    await bus.publish(["live"], "event", {})
    await bus.publish(["gone"], "event", {})
    backend.trim()
    assert set(backend.channels) == {"live"}
    bus.unlisten("live")
    backend.trim()
    assert backend.channels == {}


async def test_channels_get_distinct_epochs_in_one_process_and_across_processes():
    one, two = LocalBackend(), LocalBackend()
    a, b = await one.position("a"), await one.position("b")
    assert len({a.epoch, b.epoch, (await two.position("a")).epoch}) == 3


async def test_payload_is_encoded_once_and_names_the_channel_asked_for():
    bus = await started(LocalBackend())
    pub = await bus.publish(["a", "b"], "entity_event", {"entity_id": 7, "data": {"x": 1.5}})
    first = pub.payload("a")
    assert pub.payload("a") is first  # cached bytes, not re-encoded
    frame_a, frame_b = codec.loads(first), codec.loads(pub.payload("b"))
    assert frame_a == {
        "type": "entity_event",
        "channel": "a",
        "offset": 1,
        "epoch": pub.epochs["a"],
        "timestamp": pub.timestamp,
        "entity_id": 7,
        "data": {"x": 1.5},
        "offsets": {"a": 1, "b": 1},
    }
    # Each channel's frame carries that channel's epoch.
    assert frame_b["channel"] == "b"
    assert frame_b["epoch"] == pub.epochs["b"]


async def test_single_channel_payload_has_no_offsets_map_and_empty_body_is_valid():
    bus = await started(LocalBackend())
    pub = await bus.publish(["a"], "event", {})
    assert codec.loads(pub.payload("a")) == {
        "type": "event",
        "channel": "a",
        "offset": 1,
        "epoch": pub.epochs["a"],
        "timestamp": pub.timestamp,
    }
