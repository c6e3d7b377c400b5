"""Domain services: pure of HTTP; REST views and WebSocket frames both call them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from server.bus import Bus
from server.config import Config
from server.services.chat import ChatService
from server.services.events import EventService
from server.services.notifications import NotificationService
from server.services.predictions import PredictionService
from server.services.readings import ReadingService
from server.services.sensors import SensorsService
from server.services.users import UsersService
from server.storage import Storage


@dataclass(frozen=True, slots=True)
class Services:
    storage: Storage
    chat: ChatService
    events: EventService
    notifications: NotificationService
    predictions: PredictionService
    readings: ReadingService
    sensors: SensorsService
    users: UsersService
    # What the transports that feed these services report of themselves in stats, by
    # name (the MQTT bridge: "mqtt"); they add and remove themselves.
    reporters: dict[str, Callable[[], dict[str, Any]]] = field(default_factory=dict)


def create_services(storage: Storage, bus: Bus, config: Config) -> Services:
    return Services(
        storage=storage,
        chat=ChatService(storage, bus, config.chat),
        events=EventService(bus),
        notifications=NotificationService(storage, bus, config.notifications),
        predictions=PredictionService(storage, bus),
        readings=ReadingService(storage, bus),
        sensors=SensorsService(storage, bus),
        users=UsersService(storage),
    )
