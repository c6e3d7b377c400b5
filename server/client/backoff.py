"""Reconnect delays: exponential backoff with full jitter (AWS Architecture Blog,
"Exponential Backoff And Jitter"): attempt n waits uniform(0, min(cap, base * factor**n)),
so a thousand clients dropped at once do not come back at once."""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    base: float = 0.5
    cap: float = 30.0
    factor: float = 2.0
    # Injected in tests: a function returning a float in [0, 1).
    random: Callable[[], float] = field(default=_random.random, repr=False)

    def ceiling(self, attempt: int) -> float:
        """The most attempt `attempt` (0-based) may wait."""
        # min() before the power would overflow: factor**1100 is inf, factor**2000 raises.
        if attempt >= 64:
            return self.cap
        return min(self.cap, self.base * self.factor**attempt)

    def delay(self, attempt: int) -> float:
        return self.random() * self.ceiling(attempt)
