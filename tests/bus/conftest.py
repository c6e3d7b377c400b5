"""`bus` over [local, redis]: the same contract tests run on both backends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from server.bus import Backend, Bus, HistoryRule, Position, Publication
from server.bus.local import LocalBackend
from server.bus.redis import RedisBackend
from tests.conftest import eventually
from tests.redis_util import delete_prefix, new_prefix, require_redis

TIMEOUT = 5.0


class Harness:
    """A started bus and everything it delivered and reset."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.got: list[Publication] = []
        self.batches: list[list[Publication]] = []
        self.resets: list[tuple[str, Position]] = []

        async def receive(batch: list[Publication]) -> None:
            self.got.extend(batch)
            self.batches.append(batch)

        bus.on_publication.append(receive)
        bus.on_reset.append(lambda channel, position: self.resets.append((channel, position)))

    async def received(self, count: int) -> list[Publication]:
        """Wait (with a deadline) until `count` publications in all were delivered."""
        await eventually(lambda: len(self.got) >= count, TIMEOUT)
        return self.got

    async def fence(self, channel: str = "fence") -> None:
        """A publication on a listened channel, waited for: whatever was published before it
        and is due here has arrived by then (one ordered stream per instance)."""
        await self.bus.listen(channel)
        pub = await self.bus.publish([channel], "event", {"fence": True})
        await eventually(
            lambda: any(p.offsets == pub.offsets and channel in p.channels for p in self.got),
            TIMEOUT,
        )
        self.got = [p for p in self.got if channel not in p.channels]


Rule = Callable[[str], HistoryRule]
MakeBus = Callable[..., Any]


def default_rule(size: int = 10, ttl: float = 0, max_bytes: int = 0) -> Rule:
    return lambda channel: HistoryRule(0 if channel.startswith("quiet") else size, ttl, max_bytes)


@pytest.fixture(params=["local", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        require_redis()
    return str(request.param)


@pytest.fixture
async def make_bus(kind: str) -> AsyncIterator[MakeBus]:
    """`await make_bus(rule=..., instance=...)`: a started Harness; every bus made in one test
    shares the test's Redis prefix (they are instances of one cluster)."""
    prefix = new_prefix()
    made: list[Bus] = []

    async def make(rule: Rule | None = None, instance: str = "", **kw: Any) -> Harness:
        rule = rule or default_rule()
        instance = instance or f"i{len(made) + 1}"
        backend: Backend
        if kind == "redis":
            url = kw.pop("url", None) or require_redis()
            backend = RedisBackend(url, prefix, instance, rule, kw.pop("presence_ttl", 30.0))
        else:
            backend = LocalBackend(history_rule=rule)
        bus = Bus(backend, instance)
        harness = Harness(bus)
        await bus.start()
        made.append(bus)
        return harness

    yield make
    for bus in made:
        await bus.stop()
    if kind == "redis":
        delete_prefix(require_redis(), prefix)
