"""Channel-name syntax (SPEC §3): a leaf module that config, auth and channels all import,
so none of them has to import another for it."""

from __future__ import annotations

import re
from collections.abc import Callable

from marshmallow import ValidationError

from server.errors import BadRequest

MAX_CHANNEL_LENGTH = 128
CHANNEL_RE = re.compile(r"[a-z0-9_.-]+(:[A-Za-z0-9_.@-]+)?")
# user:{id} is private whatever the config says: only that user, or an admin.
PRIVATE_NAMESPACE = "user"


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


def is_private(channel: str) -> bool:
    """A `user:{id}` channel: only its user (or an admin) may read it."""
    ns, sep, _ = channel.partition(":")
    return ns == PRIVATE_NAMESPACE and bool(sep)


def parse_channel_list(values: list[str]) -> list[str]:
    """`?channel=a&channel=b,c` -> [a, b, c], validated, order kept, duplicates dropped."""
    out: list[str] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if part and part not in out:
                out.append(check_channel(part))
    return out
