"""Conflation (`subscribe.max_rate`): at most max_rate events per entity per second, newest wins.

Subscribers of one channel at one max_rate share a Conflation: the newest pending publication
per entity is kept once for all of them, not per subscriber, so a publication costs one dict
store however many dashboards watch. One hub-level timer (a heap of due times) releases the
pending ones; no task and no timer per connection.

An entity is `entity_type` + `entity_id` of an `entity_event` (a reading is the sensor's);
anything else (system events, chat, notifications, presence) is delivered at once.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from server.bus import Publication
    from server.hub.connection import Connection

# Loop timers may fire this much before their time: not worth another round.
EARLY = 0.001

Key = tuple[Any, Any]


def entity_key(pub: Publication) -> Key | None:
    """What a publication is conflated by, or None: not per entity, never conflated."""
    if pub.type != "entity_event" or pub.ephemeral:
        return None
    body = pub.body
    entity_id = body.get("entity_id")
    if not isinstance(entity_id, int | str):
        return None
    return (body.get("entity_type"), entity_id)


def newest_per_entity(pubs: list[Publication]) -> list[Publication]:
    """A recovery's conflation: per entity only the newest, every other event; in order."""
    last: dict[Key, Publication] = {}
    for pub in pubs:
        key = entity_key(pub)
        if key is not None:
            last[key] = pub
    keep = set(map(id, last.values()))
    return [p for p in pubs if entity_key(p) is None or id(p) in keep]


class Conflation:
    """The subscribers of one channel at one max_rate."""

    __slots__ = ("channel", "interval", "max_rate", "members", "pending", "sent_at")

    def __init__(self, channel: str, max_rate: float) -> None:
        self.channel = channel
        self.max_rate = max_rate
        self.interval = 1.0 / max_rate
        self.members: set[Connection] = set()
        # entity -> the newest publication not sent yet; entity -> when it was last sent.
        self.pending: dict[Key, Publication] = {}
        self.sent_at: dict[Key, float] = {}


Deliver = Callable[[Conflation, "Publication"], None]


class Conflator:
    """Every conflated subscription of a hub, and its one timer."""

    def __init__(self, deliver: Deliver, clock: Callable[[], float]) -> None:
        self.deliver = deliver
        self.clock = clock
        # channel -> max_rate -> Conflation
        self.groups: dict[str, dict[float, Conflation]] = {}
        # (due, tie-break, group, entity): when an entity's pending one may go, or when its
        # sent_at may be forgotten.
        self._heap: list[tuple[float, int, Conflation, Key]] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")

    def join(self, conn: Connection, channel: str, max_rate: float) -> None:
        rates = self.groups.setdefault(channel, {})
        group = rates.get(max_rate)
        if group is None:
            group = rates[max_rate] = Conflation(channel, max_rate)
        group.members.add(conn)

    def leave(self, conn: Connection, channel: str, max_rate: float) -> None:
        rates = self.groups.get(channel)
        group = rates.get(max_rate) if rates else None
        if rates is None or group is None:
            return
        group.members.discard(conn)
        if not group.members:
            # Its heap entries are skipped when they come due.
            group.pending.clear()
            del rates[max_rate]
            if not rates:
                del self.groups[channel]

    def members(self, channel: str) -> set[Connection]:
        rates = self.groups.get(channel)
        if not rates:
            return set()
        return set().union(*(g.members for g in rates.values()))

    def offer(self, pub: Publication) -> None:
        """A live publication, for every conflated subscription of its channels."""
        groups = self.groups
        key: Key | None = None
        keyed = False
        now = 0.0
        for channel in pub.channels:
            rates = groups.get(channel)
            if not rates:
                continue
            if not keyed:
                key, keyed, now = entity_key(pub), True, self.clock()
            for group in list(rates.values()):
                if key is None:
                    self.deliver(group, pub)
                elif key in group.pending:
                    group.pending[key] = pub  # the newest wins; its slot stays
                else:
                    due = group.sent_at.get(key, -group.interval) + group.interval
                    if due <= now + EARLY:
                        group.sent_at[key] = now
                        self._push(now + group.interval, group, key)
                        self.deliver(group, pub)
                    else:
                        group.pending[key] = pub
                        self._push(due, group, key)

    def _push(self, due: float, group: Conflation, key: Key) -> None:
        heapq.heappush(self._heap, (due, next(self._seq), group, key))
        if due < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = due
            delay = max(0.0, due - self.clock())
            self._timer = asyncio.get_running_loop().call_later(delay, self._tick)

    def _tick(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        heap = self._heap
        now = self.clock()
        while heap and heap[0][0] <= now + EARLY:
            _, _, group, key = heapq.heappop(heap)
            if not group.members:
                continue
            sent = group.sent_at.get(key)
            if sent is not None and sent + group.interval > now + EARLY:
                continue  # an older entry: the entity's current one is still in the heap
            pub = group.pending.pop(key, None)
            if pub is None:
                group.sent_at.pop(key, None)  # idle for a whole interval: forget it
                continue
            group.sent_at[key] = now
            heapq.heappush(heap, (now + group.interval, next(self._seq), group, key))
            self.deliver(group, pub)
        if heap:
            due = heap[0][0]
            self._timer_at = due
            delay = max(0.0, due - self.clock())
            self._timer = asyncio.get_running_loop().call_later(delay, self._tick)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
