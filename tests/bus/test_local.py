"""The in-memory backend: offsets, epoch, ring-buffer history and recovery."""

from __future__ import annotations

import pytest

from server import codec
from server.bus import Bus, Position, Publication
from server.bus.local import LocalBackend


async def started(backend: LocalBackend) -> tuple[Bus, list[Publication]]:
    bus = Bus(backend)
    got: list[Publication] = []

    async def receive(batch: list[Publication]) -> None:
        got.extend(batch)

    bus.on_publication.append(receive)
    await bus.start()
    return bus, got


async def test_offsets_increase_by_one_per_channel_and_every_publication_is_delivered():
    bus, got = await started(LocalBackend(10, 0))
    a1 = await bus.publish(["a"], "event", {"data": 1})
    b1 = await bus.publish(["b"], "event", {"data": 2})
    both = await bus.publish(["a", "b"], "event", {"data": 3})
    assert a1.offsets == {"a": 1}
    assert b1.offsets == {"b": 1}
    assert both.offsets == {"a": 2, "b": 2}
    assert {p.epoch for p in got} == {bus.backend.epoch}
    assert got == [a1, b1, both]
    assert await bus.position("a") == Position(2, bus.backend.epoch)
    assert await bus.position("never") == Position(0, bus.backend.epoch)


async def test_each_process_has_its_own_epoch():
    assert LocalBackend(1, 0).epoch != LocalBackend(1, 0).epoch


async def test_duplicate_channels_in_one_publication_count_once():
    bus, _ = await started(LocalBackend(10, 0))
    pub = await bus.publish(["a", "a", "b"], "event", {})
    assert pub.channels == ("a", "b")
    assert pub.offsets == {"a": 1, "b": 1}


async def test_recover_returns_exactly_the_missed_publications_in_order():
    bus, _ = await started(LocalBackend(10, 0))
    pubs = [await bus.publish(["a"], "event", {"data": i}) for i in range(5)]
    epoch = bus.backend.epoch
    result = await bus.recover("a", Position(2, epoch))
    assert result.recovered is True
    assert result.publications == pubs[2:]
    assert result.position == Position(5, epoch)


async def test_recover_at_the_top_is_recovered_with_nothing_to_send():
    bus, _ = await started(LocalBackend(10, 0))
    await bus.publish(["a"], "event", {})
    result = await bus.recover("a", Position(1, bus.backend.epoch))
    assert (result.recovered, result.publications) == (True, [])


@pytest.mark.parametrize(
    ("since_offset", "epoch_ok"),
    [(0, False), (9, True)],
    ids=["other-epoch", "ahead-of-server"],
)
async def test_recover_from_an_unknown_position_is_not_recovered(since_offset, epoch_ok):
    bus, _ = await started(LocalBackend(10, 0))
    await bus.publish(["a"], "event", {})
    epoch = bus.backend.epoch if epoch_ok else "another-epoch"
    result = await bus.recover("a", Position(since_offset, epoch))
    assert (result.recovered, result.publications) == (False, [])
    assert result.position.offset == 1


async def test_a_gap_older_than_the_ring_buffer_is_not_recovered():
    bus, _ = await started(LocalBackend(3, 0))
    for i in range(6):
        await bus.publish(["a"], "event", {"data": i})
    epoch = bus.backend.epoch
    assert (await bus.recover("a", Position(1, epoch))).recovered is False
    kept = await bus.recover("a", Position(3, epoch))
    assert kept.recovered is True
    assert [p.offsets["a"] for p in kept.publications] == [4, 5, 6]


async def test_expired_history_is_not_recovered_and_trim_drops_it():
    # The backend's own clock: patching time.monotonic would freeze the loop's clock too.
    now = 500.0
    bus, _ = await started(LocalBackend(10, 60, clock=lambda: now))
    await bus.publish(["a"], "event", {})
    await bus.publish(["a"], "event", {})
    now += 59
    assert (await bus.recover("a", Position(0, bus.backend.epoch))).recovered is True
    now += 2
    assert (await bus.recover("a", Position(0, bus.backend.epoch))).recovered is False
    assert bus.backend.trim() == 2
    # Offsets survive the trim: a new publication continues the sequence.
    assert (await bus.publish(["a"], "event", {})).offsets == {"a": 3}


async def test_a_channel_without_history_keeps_offsets_but_nothing_to_recover():
    bus, _ = await started(LocalBackend(10, 0, keeps_history=lambda ch: ch != "quiet"))
    await bus.publish(["quiet"], "event", {})
    await bus.publish(["quiet"], "event", {})
    result = await bus.recover("quiet", Position(0, bus.backend.epoch))
    assert (result.recovered, result.position.offset) == (False, 2)


async def test_payload_is_encoded_once_and_names_the_channel_asked_for():
    bus, _ = await started(LocalBackend(10, 0))
    pub = await bus.publish(["a", "b"], "entity_event", {"entity_id": 7, "data": {"x": 1.5}})
    first = pub.payload("a")
    assert pub.payload("a") is first  # cached bytes, not re-encoded
    frame_a, frame_b = codec.loads(first), codec.loads(pub.payload("b"))
    assert frame_a == {
        "type": "entity_event",
        "channel": "a",
        "offset": 1,
        "epoch": bus.backend.epoch,
        "timestamp": pub.timestamp,
        "entity_id": 7,
        "data": {"x": 1.5},
        "offsets": {"a": 1, "b": 1},
    }
    assert {k: v for k, v in frame_b.items() if k != "channel"} == {
        k: v for k, v in frame_a.items() if k != "channel"
    }
    assert frame_b["channel"] == "b"


async def test_single_channel_payload_has_no_offsets_map_and_empty_body_is_valid():
    bus, _ = await started(LocalBackend(10, 0))
    pub = await bus.publish(["a"], "event", {})
    assert codec.loads(pub.payload("a")) == {
        "type": "event",
        "channel": "a",
        "offset": 1,
        "epoch": bus.backend.epoch,
        "timestamp": pub.timestamp,
    }


async def test_publish_many_is_one_ordered_batch_with_one_timestamp():
    backend = LocalBackend(10, 0)
    bus = Bus(backend)
    batches: list[list[Publication]] = []

    async def receive(batch: list[Publication]) -> None:
        batches.append(batch)

    bus.on_publication.append(receive)
    await bus.start()
    pubs = await bus.publish_many(
        [(["a"], "event", {"data": 1}), (["a", "b"], "event", {"data": 2}), (["b"], "event", {})]
    )
    assert batches == [pubs]
    assert [p.offsets for p in pubs] == [{"a": 1}, {"a": 2, "b": 1}, {"b": 2}]
    assert len({p.timestamp for p in pubs}) == 1
    assert await bus.publish_many([]) == []
    assert len(batches) == 1
