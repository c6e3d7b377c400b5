"""Who may read or publish where: the one access check for a channel's content.

`ChannelPolicy.can_read` decides whether a principal may see what a channel carries, live
or stored: subscribe (WebSocket, SSE), every history read (chat messages, notifications,
seed adapters) and the stats that name channels all ask it, so a rule is written once.
Channel-name syntax lives in server.channel_names (a leaf module config also uses).
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from server.auth import Principal
from server.channel_names import PRIVATE_NAMESPACE, namespace
from server.config import ChannelsConfig
from server.errors import Forbidden


class ChannelPolicy:
    def __init__(self, config: ChannelsConfig) -> None:
        self.config = config

    def history_enabled(self, channel: str) -> bool:
        return self.config.rule(namespace(channel)).history

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
