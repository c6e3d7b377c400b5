"""Every piece of typed app state."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiojobs
from aiohttp import web

if TYPE_CHECKING:
    from server.api.auth import LoginLimits
    from server.api.operations import Operation
    from server.api.sse import SseConnection
    from server.auth import Authenticator
    from server.bus import Bus
    from server.channels import ChannelPolicy
    from server.config import Config
    from server.hub import Hub
    from server.ingest.mqtt import MqttBridge
    from server.metrics import Metrics
    from server.notify import Notifier
    from server.services import Services
    from server.ws.commands import Dispatcher

CONFIG: web.AppKey[Config] = web.AppKey("config")
AUTH: web.AppKey[Authenticator] = web.AppKey("auth")
POLICY: web.AppKey[ChannelPolicy] = web.AppKey("policy")
BUS: web.AppKey[Bus] = web.AppKey("bus")
HUB: web.AppKey[Hub] = web.AppKey("hub")
SERVICES: web.AppKey[Services] = web.AppKey("services")
OPERATIONS: web.AppKey[dict[tuple[str, str], Operation]] = web.AppKey("operations")
DISPATCHER: web.AppKey[Dispatcher] = web.AppKey("dispatcher")
LOGIN_LIMITS: web.AppKey[LoginLimits] = web.AppKey("login_limits")
OPENAPI = web.AppKey("openapi", bytes)
ASYNCAPI = web.AppKey("asyncapi", bytes)
# Open Server-Sent Events streams: the keep-alive writes to them.
SSE_STREAMS: web.AppKey[set[SseConnection]] = web.AppKey("sse_streams")
JOBS = web.AppKey("jobs", aiojobs.Scheduler)
NOTIFIER: web.AppKey[Notifier] = web.AppKey("notifier")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
MQTT: web.AppKey[MqttBridge] = web.AppKey("mqtt")
