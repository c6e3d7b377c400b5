"""`sensorcast serve`, and the file it leaves under var/ saying where it listens (read by
tail, publish and stats). Fatal: what any command raises for a problem the operator must
fix; cli.main() prints it as one line.
"""

from __future__ import annotations

import argparse
import re

from server.config import Config

# Where `serve` writes the URL it listens on, under var/: tail, publish and stats read it, so
# `SENSORCAST_SERVER_PORT=18500 make run` and a `sensorcast tail` beside it agree.
LISTENING_FILE = "listening"


class Fatal(Exception):
    """A start-up problem the operator must fix; printed as one line, no traceback. Here
    because serve is the first to raise it; admin_cli raises it too."""


def serve(config: Config, args: argparse.Namespace) -> int:
    import logging

    import uvloop
    from aiohttp import web

    from server.app import create_app
    from server.jobs import connections_status
    from server.logs import RedactingAccessLogger, setup_logging
    from server.notify import Notifier
    from server.storage import StorageError

    setup_logging(config.logging)
    notifier = Notifier.from_environ()
    where = f"http://{config.server.host}:{config.server.port}"
    wrote: list[bool] = []

    def listening(banner: str) -> None:
        # run_app calls this once every site accepts: the moment systemd may route traffic.
        # Instead of aiohttp's plain banner, one log line in the configured format. The
        # banner names the bound address: the port the kernel gave when the config says 0.
        nonlocal where
        bound = re.search(r"http://\S+:(\d+)", banner)
        if config.server.port == 0 and bound is not None:
            where = f"http://{config.server.host}:{bound.group(1)}"
        logging.getLogger("server").info("listening on %s", where, extra={"event": "listening"})
        notifier.ready(f"listening on {where}, {connections_status(0)}")
        wrote.append(_write_listening(config, where))

    try:
        web.run_app(
            create_app(config, notifier),
            host=config.server.host,
            port=config.server.port,
            shutdown_timeout=config.server.shutdown_timeout,
            loop=uvloop.new_event_loop(),
            access_log_class=RedactingAccessLogger,
            print=listening,
        )
    except StorageError as exc:
        raise Fatal(str(exc)) from None
    except OSError as exc:
        raise Fatal(f"cannot serve on {config.server.host}:{config.server.port}: {exc}") from None
    finally:
        if any(wrote):
            (config.var_dir / LISTENING_FILE).unlink(missing_ok=True)
    return 0


def _write_listening(config: Config, url: str) -> bool:
    try:
        config.var_dir.mkdir(parents=True, exist_ok=True)
        (config.var_dir / LISTENING_FILE).write_text(url + "\n")
        return True
    except OSError:
        return False  # read-only (systemd's ProtectSystem): tail uses the config's port


def listening_url(config: Config) -> str | None:
    """The URL a server using this config said it listens on (its port may come from an
    environment variable this process does not have)."""
    try:
        url = (config.var_dir / LISTENING_FILE).read_text().strip()
    except OSError:
        return None
    host = url.partition("://")[2].rpartition(":")[0]
    if host in ("0.0.0.0", "::", "[::]"):
        url = url.replace(host, "127.0.0.1", 1)
    return url or None
