"""Seed compatibility: thin adapters at the edge for the clients of the five systems
Sensorcast replaces (SPEC §10). URL aliases call the same operations and services as the
native API; a socket that speaks a seed's protocol has a Dialect that renames frames on the
way in and out. Nothing here implements a feature a second time.
"""

from __future__ import annotations

from typing import Any

from server import codec


class Dialect:
    """Translates one seed's frames to and from the native protocol (identity by default).

    `outbound` sees every native frame a socket would get (publications, replies, errors)
    as a dict and returns what that seed's clients read, or None to send nothing.
    """

    name = "native"

    def inbound(self, frame: dict[str, Any]) -> dict[str, Any]:
        return frame

    def outbound(self, frame: dict[str, Any]) -> dict[str, Any] | None:
        return frame

    def encode(self, payload: bytes) -> bytes | None:
        """A native frame's JSON bytes -> this dialect's, or None."""
        frame = codec.loads(payload)
        out = self.outbound(frame)
        if out is None:
            return None
        return payload if out is frame else codec.dumps(out)
