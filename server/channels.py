"""Channel names, namespaces and who may subscribe or publish where."""

from __future__ import annotations

import re
from collections.abc import Callable
from fnmatch import fnmatchcase

from marshmallow import ValidationError

from server.auth import Principal
from server.bus import HistoryRule
from server.config import ChannelsConfig, HistoryConfig
from server.errors import BadRequest

MAX_CHANNEL_LENGTH = 128
CHANNEL_RE = re.compile(r"[a-z0-9_.-]+(:[A-Za-z0-9_.@-]+)?")
# user:{id} is private whatever the config says: only that user, or an admin.
PRIVATE_NAMESPACE = "user"
# Namespaces whose history rule is remembered; past it, rules are computed each time.
MAX_CACHED_RULES = 1024


def check_channel(name: object) -> str:
    """The channel name if valid, else BadRequest saying why."""
    if not isinstance(name, str):
        raise BadRequest("channel must be a string")
    if len(name) > MAX_CHANNEL_LENGTH:
        raise BadRequest(f"channel name longer than {MAX_CHANNEL_LENGTH} characters")
    if not CHANNEL_RE.fullmatch(name):
        raise BadRequest(
            f"invalid channel name {name!r}: expected namespace[:id], "
            "namespace of [a-z0-9_.-], id of [A-Za-z0-9_.@-]"
        )
    return name


def as_validator(check: Callable[[str], object]) -> Callable[[str], None]:
    """A check that raises BadRequest as a marshmallow validator: the reason is reported
    under the field."""

    def validator(value: str) -> None:
        try:
            check(value)
        except BadRequest as exc:
            raise ValidationError(exc.message) from None

    return validator


validate_channel = as_validator(check_channel)


def namespace(channel: str) -> str:
    return channel.partition(":")[0]


def parse_channel_list(values: list[str]) -> list[str]:
    """`?channel=a&channel=b,c` -> [a, b, c], validated, order kept, duplicates dropped."""
    out: list[str] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if part and part not in out:
                out.append(check_channel(part))
    return out


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
            # Bounded: one entry per configured namespace plus whatever clients name.
            if len(self._history_rules) < MAX_CACHED_RULES:
                self._history_rules[ns] = rule = HistoryRule(size, ttl, cap)
            else:
                rule = HistoryRule(size, ttl, cap)
        return rule

    def presence_enabled(self, channel: str) -> bool:
        return self.config.rule(namespace(channel)).presence

    def can_subscribe(self, principal: Principal, channel: str) -> bool:
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

    def can_publish(self, principal: Principal, channel: str) -> bool:
        if principal.role == "admin":
            return True
        return principal.role in self.config.rule(namespace(channel)).publish
