"""create_app(config): state, resources (cleanup_ctx), middlewares, routes, shutdown."""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator

from aiohttp import web

from server import codec
from server.api.asyncapi import build_asyncapi
from server.api.middleware import REST_LIMITER, shape_router_errors
from server.api.routes import setup_routes
from server.auth import Authenticator
from server.bus import Backend, Bus
from server.bus.local import LocalBackend
from server.bus.redis import RedisBackend
from server.channels import ChannelPolicy
from server.compat import seed001
from server.config import Config
from server.hub import Hub, HubLimits
from server.ingest.mqtt import mqtt_ctx
from server.jobs import jobs_ctx
from server.keys import (
    ASYNCAPI,
    AUTH,
    BUS,
    CONFIG,
    DISPATCHER,
    HUB,
    METRICS,
    MQTT,
    NOTIFIER,
    OPERATIONS,
    POLICY,
    SERVICES,
    SSE_STREAMS,
)
from server.metrics import Metrics, namespace_labeller
from server.notify import Notifier
from server.services import create_services
from server.storage import open_storage
from server.storage.migrate import MIGRATIONS_DIR, ensure_current
from server.ws import chat, commands, expiry
from server.ws.endpoint import close_all

log = logging.getLogger(__name__)

# API tokens shorter than this are accepted (seed demo tokens) but warned about.
STRONG_TOKEN_LENGTH = 16


def create_app(config: Config, notifier: Notifier | None = None) -> web.Application:
    """`notifier`: sd_notify (serve passes one from the environment; tests a test socket)."""
    app = web.Application(client_max_size=config.server.max_body_bytes)
    app[NOTIFIER] = notifier or Notifier()
    app.on_response_prepare.append(shape_router_errors)
    app[CONFIG] = config
    app[AUTH] = Authenticator(config.auth, config.var_dir, config.base_dir)
    policy = app[POLICY] = ChannelPolicy(config.channels, config.history)
    instance = instance_name()
    bus = app[BUS] = Bus(
        make_backend(config, policy, instance),
        instance,
        max_payload_bytes=config.ws.max_queue_bytes,
    )
    limits = HubLimits(
        config.ws.max_subscriptions, config.ws.max_anonymous_channels, config.ws.max_lag
    )
    hub = app[HUB] = Hub(
        bus, policy.presence_enabled, namespace_labeller(_namespaces(config)), limits=limits
    )
    app[SSE_STREAMS] = set()
    setup_routes(app)
    limiter = app.get(REST_LIMITER)
    metrics = app[METRICS] = Metrics(hub, lambda: limiter.refused if limiter else 0)
    hub.observe_latency = metrics.publish_latency.observe
    metrics.mqtt = lambda: _mqtt_counts(app)
    app[DISPATCHER] = commands.Dispatcher(
        hub,
        policy,
        config,
        app[OPERATIONS],
        services=lambda: app[SERVICES],
        commands=(*commands.COMMANDS, *chat.COMMANDS, *expiry.COMMANDS, *seed001.COMMANDS),
        adopt=seed001.adopt,
        auth=app[AUTH],
    )
    # Seed 001's envelope is a dialect (SPEC §10), not part of the native protocol.
    native = (c for c in app[DISPATCHER].commands.values() if c.type != seed001.REQUEST_TYPE)
    app[ASYNCAPI] = codec.dumps(build_asyncapi(native))
    app.cleanup_ctx.append(storage_ctx)
    app.cleanup_ctx.append(bus_ctx)
    app.cleanup_ctx.append(jobs_ctx)
    app.on_shutdown.append(_stopping)
    if config.mqtt.enabled:
        app.cleanup_ctx.append(mqtt_ctx)
    app.on_shutdown.append(close_all)
    if config.auth.anonymous_writes:
        log.warning("auth.anonymous_writes is on: anyone who can reach this server may write")
    for api_token in config.auth.api_tokens:
        if len(api_token.token) < STRONG_TOKEN_LENGTH:
            log.warning(
                "API token %r is shorter than %d characters: anyone may guess it",
                api_token.name,
                STRONG_TOKEN_LENGTH,
            )
    return app


def _mqtt_counts(app: web.Application) -> tuple[int, int] | None:
    bridge = app.get(MQTT)
    return (bridge.stats.accepted, bridge.stats.rejected) if bridge is not None else None


def _namespaces(config: Config) -> set[str]:
    """Namespaces named in the config: the `namespace` label values besides the server's."""
    routes = [r.channel for r in config.notifications.routes]
    channels = [*routes, config.notifications.default_channel]
    return set(config.channels.namespaces) | {c.partition(":")[0] for c in channels}


def instance_name() -> str:
    """This process among several instances: host, pid and a few random characters (two
    apps in one test process differ too)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


def make_backend(config: Config, policy: ChannelPolicy, instance: str) -> Backend:
    if config.bus.backend == "redis":
        return RedisBackend(
            config.redis.url,
            config.redis.prefix,
            instance,
            policy.history_rule,
            config.redis.presence_ttl,
        )
    return LocalBackend(history_rule=policy.history_rule)


async def storage_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    db = config.database
    storage = await open_storage(
        db.url,
        base_dir=config.base_dir,
        pool_min=db.pool_min,
        pool_max=db.pool_max,
        acquire_timeout=db.acquire_timeout,
    )
    try:
        await ensure_current(storage, MIGRATIONS_DIR, db.auto_migrate)
        services = app[SERVICES] = create_services(storage, app[BUS], config)
        yield
        services.chat.close()
    finally:
        await storage.close()


async def bus_ctx(app: web.Application) -> AsyncIterator[None]:
    bus = app[BUS]
    await bus.start()
    yield
    await bus.stop()
    app[HUB].conflator.close()
    app[HUB].close()


async def _stopping(app: web.Application) -> None:
    """First of on_shutdown: systemd shows the unit as deactivating from here on."""
    app[NOTIFIER].stopping()
