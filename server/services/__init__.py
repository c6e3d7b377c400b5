"""Domain services: pure of HTTP; REST views and WebSocket frames both call them."""

from __future__ import annotations

from dataclasses import dataclass

from server.bus import Bus
from server.services.events import EventService
from server.services.predictions import PredictionService
from server.services.readings import ReadingService
from server.services.sensors import SensorsService
from server.services.users import UsersService
from server.storage import Storage


@dataclass(frozen=True, slots=True)
class Services:
    storage: Storage
    events: EventService
    predictions: PredictionService
    readings: ReadingService
    sensors: SensorsService
    users: UsersService


def create_services(storage: Storage, bus: Bus) -> Services:
    return Services(
        storage=storage,
        events=EventService(bus),
        predictions=PredictionService(storage, bus),
        readings=ReadingService(storage, bus),
        sensors=SensorsService(storage, bus),
        users=UsersService(storage),
    )
