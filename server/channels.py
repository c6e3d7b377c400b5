"""Who may read or publish where: the one access check for a channel's content.

`ChannelPolicy.can_read` decides whether a principal may see what a channel carries, live
or stored: subscribe (WebSocket, SSE), every history read (chat messages, notifications,
seed adapters) and the stats that name channels all ask it, so a rule is written once.
Channel-name syntax lives in server.channel_names (a leaf module config also uses).
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from server.auth import Principal
from server.bus import HistoryRule
from server.channel_names import PRIVATE_NAMESPACE, namespace
from server.config import ChannelsConfig, HistoryConfig
from server.errors import Forbidden

# Namespaces whose history rule is remembered; past it, rules are computed each time.
MAX_CACHED_RULES = 1024


class ChannelPolicy:
    def __init__(self, config: ChannelsConfig, history: HistoryConfig | None = None) -> None:
        self.config = config
        self.history = history or HistoryConfig()
        self._history_rules: dict[str, HistoryRule] = {}

    def history_enabled(self, channel: str) -> bool:
        return self.config.rule(namespace(channel)).history

    def history_rule(self, channel: str) -> HistoryRule:
        """The channel's history bounds: its namespace's, else the `history` section's."""
        ns = namespace(channel)
        rule = self._history_rules.get(ns)
        if rule is None:
            r, h = self.config.rule(ns), self.history
            size = (h.size if r.history_size < 0 else r.history_size) if r.history else 0
            ttl = h.ttl if r.history_ttl < 0 else r.history_ttl
            cap = h.max_bytes if r.history_max_bytes < 0 else r.history_max_bytes
            rule = HistoryRule(size, ttl, cap)
            # Bounded: one entry per configured namespace plus whatever clients name.
            if len(self._history_rules) < MAX_CACHED_RULES:
                self._history_rules[ns] = rule
        return rule

    def presence_enabled(self, channel: str) -> bool:
        return self.config.rule(namespace(channel)).presence

    def can_read(self, principal: Principal, channel: str) -> bool:
        """May `principal` receive or read what `channel` carries (live, history, stats)?

        A token's `channels` claim narrows every role; `user:{id}` is its user's (or an
        admin's) only; otherwise the namespace's `subscribe` roles decide."""
        if principal.channels is not None and not any(
            fnmatchcase(channel, pattern) for pattern in principal.channels
        ):
            return False
        if principal.role == "admin":
            return True
        ns, _, ident = channel.partition(":")
        if ns == PRIVATE_NAMESPACE:
            return not principal.anonymous and ident == principal.sub
        return principal.role in self.config.rule(ns).subscribe

    # Subscribing is reading: the same check under the name older callers use.
    can_subscribe = can_read

    def check_read(self, principal: Principal, channel: str) -> None:
        """Forbidden unless `principal` may read `channel`."""
        if not self.can_read(principal, channel):
            raise Forbidden(f"not allowed to read {channel}")

    def can_publish(self, principal: Principal, channel: str) -> bool:
        if principal.role == "admin":
            return True
        return principal.role in self.config.rule(namespace(channel)).publish
