"""sd_notify over $NOTIFY_SOCKET (systemd's notify protocol, standard library only).

READY=1 once the port accepts, STATUS= with the connection count now and then, WATCHDOG=1
every half $WATCHDOG_USEC from the event loop (so a blocked loop stops it and systemd
restarts the service), STOPPING=1 at shutdown. Without $NOTIFY_SOCKET every call is a
no-op, so the same code runs under systemd, in a terminal and in the tests.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, address: str | None = None, watchdog_usec: int = 0) -> None:
        # "@name" is an abstract socket: its first byte is NUL on the wire.
        self.address = "\0" + address[1:] if address and address.startswith("@") else address
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        # WATCHDOG_PID names the process the watchdog is meant for (not a child of ours).
        if not usec.isdigit() or (pid.isdigit() and int(pid) != os.getpid()):
            usec = "0"
        return cls(env.get("NOTIFY_SOCKET") or None, int(usec))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of what systemd allows), or None."""
        return self.watchdog_usec / 2e6 if self.enabled and self.watchdog_usec else None

    def send(self, *fields: str) -> bool:
        """One datagram of `KEY=value` lines; never blocks, never raises."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError as exc:
            # A full or vanished socket must not take the server down; say so once.
            if not self._warned:
                log.warning("sd_notify to %s failed: %s", self.address, exc)
                self._warned = True
            return False

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=shutting down")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
