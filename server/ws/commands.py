"""Client frames: @command(type, Schema) handlers and the dispatcher that runs them.

Every failure becomes an `error` frame (with the client's `id`) and the socket stays open;
frames from one socket are handled one at a time, in order.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema

from server import codec
from server.api.operations import Ctx, Operation
from server.bus import Position, Publication
from server.channel_names import validate_channel
from server.channels import ChannelPolicy
from server.errors import (
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    InvalidJson,
    Unavailable,
    UnknownType,
    ValidationFailed,
)
from server.hub import Snapshot
from server.services.chat import room_of
from server.storage import StorageError
from server.ws import frames

if TYPE_CHECKING:
    from server.auth import Authenticator
    from server.compat import Dialect
    from server.config import Config
    from server.hub import Hub
    from server.hub.connection import Connection
    from server.services import Services

log = logging.getLogger(__name__)


class FrameId(fields.Field):
    """A client's `id`: a string or an integer, echoed as is."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValidationError("id must be a string or an integer")
        return value


class Frame(Schema):
    class Meta:
        # Newer clients may send fields this server does not know yet: ignore, don't fail.
        unknown = EXCLUDE

    type = fields.String(required=True)
    id = FrameId(load_default=None)


class SinceIn(Schema):
    offset = fields.Integer(required=True, strict=True, validate=validate.Range(min=0))
    epoch = fields.String(required=True)


# Conflation rates (events per entity per second): above this it is hardly conflation.
MAX_RATE_LIMIT = 1000.0
validate_max_rate = validate.Range(
    min=0, max=MAX_RATE_LIMIT, min_inclusive=False, error="max_rate must be > 0 and <= 1000"
)


class SubscribeFrame(Frame):
    channel = fields.String(required=True, validate=validate_channel)
    since = fields.Nested(SinceIn, load_default=None)
    snapshot = fields.Boolean(load_default=False)
    max_rate = fields.Float(load_default=None, validate=validate_max_rate)


class ChannelFrame(Frame):
    channel = fields.String(required=True, validate=validate_channel)


class PublishFrame(ChannelFrame):
    data = fields.Raw(required=True)

    @validates_schema
    def _data_present(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("data") is None:
            raise ValidationError("data is required", "data")


class RequestFrame(Frame):
    resource = fields.String(required=True)
    action = fields.String(required=True)
    payload = fields.Dict(load_default=dict)


@dataclass(slots=True)
class Session:
    """What a command handler works with: the socket and the app's parts."""

    conn: Connection
    dispatcher: Dispatcher

    def reply(self, type: str, id: Any, **fields: Any) -> None:
        if id is not None:
            fields["id"] = id
        self.conn.send(frames.encode(type, **fields))

    def ctx(self) -> Ctx:
        d = self.dispatcher
        return Ctx(self.conn.principal, d.services(), d.hub, d.config, d.policy)


CommandFn = Callable[[Session, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Command:
    type: str
    schema: Schema
    fn: CommandFn
    # A type only an adapter produces (a seed dialect's translation): never offered to
    # clients in the list of known types, refused from native sockets.
    internal: bool = False


def command(
    type: str, schema: type[Schema], internal: bool = False
) -> Callable[[CommandFn], Command]:
    def decorate(fn: CommandFn) -> Command:
        return Command(type, schema(), fn, internal)

    return decorate


@command("subscribe", SubscribeFrame)
async def subscribe(session: Session, frame: dict[str, Any]) -> None:
    channel, conn = frame["channel"], session.conn
    if not session.dispatcher.policy.can_read(conn.principal, channel):
        raise Forbidden(f"not allowed to subscribe to {channel}")
    if channel in conn.subscriptions:
        raise Conflict(f"already subscribed to {channel}")
    since = frame["since"]
    position = Position(since["offset"], since["epoch"]) if since else None
    reply = {"id": frame["id"]} if frame["id"] is not None else None
    await session.dispatcher.join(
        conn, channel, position, reply, frame["snapshot"], max_rate=frame["max_rate"]
    )


# Channels whose state a subscriber may ask for first: the latest reading per metric.
SNAPSHOT_NAMESPACES = frozenset({"readings", "sensors"})


def _readings_snapshot(services: Services, channel: str) -> Callable[[], Awaitable[Snapshot]]:
    ns, _, ident = channel.partition(":")
    if ns not in SNAPSHOT_NAMESPACES or not ident.isdigit():
        raise BadRequest("snapshot is offered on readings:{sensor_id} and sensors:{id} channels")
    sensor_id = int(ident)

    async def load() -> Snapshot:
        events, covers = await services.readings.snapshot(sensor_id)
        return Snapshot(
            [frames.encode("entity_event", channel=channel, **body) for body in events],
            lambda pub: covers(pub.type, pub.body),
        )

    return load


def _no(pub: Publication) -> bool:
    return False


def _chat_history(services: Services, channel: str, room: str) -> Callable[[], Awaitable[Snapshot]]:
    async def load() -> Snapshot:
        try:
            messages = await services.chat.recent(room)
        except StorageError as exc:
            # The room works without its past: say so instead of failing the join.
            log.warning("history of %s not sent: %s", channel, exc)
            return Snapshot([frames.error(Unavailable("chat history is unavailable now"))], _no)
        top = messages[-1]["id"] if messages else 0

        def covers(pub: Publication) -> bool:
            data = pub.body.get("data") if pub.type == "message" else None
            return isinstance(data, dict) and isinstance(data.get("id"), int) and data["id"] <= top

        history = [
            frames.encode("message", channel=channel, data=m, history=True) for m in messages
        ]
        return Snapshot(history, covers)

    return load


@command("unsubscribe", ChannelFrame)
async def unsubscribe(session: Session, frame: dict[str, Any]) -> None:
    # Idempotent, as in Centrifugo: unsubscribing from a channel one is not on is no error.
    await session.dispatcher.hub.unsubscribe(session.conn, frame["channel"])
    session.reply("unsubscribed", frame["id"], channel=frame["channel"])


@command("publish", PublishFrame)
async def publish(session: Session, frame: dict[str, Any]) -> None:
    channel = frame["channel"]
    if not session.dispatcher.policy.can_publish(session.conn.principal, channel):
        raise Forbidden(f"clients may not publish to {channel}")
    data = frame["data"]
    event = data if isinstance(data, dict) else {"value": data}
    result = await session.dispatcher.services().events.publish([channel], event)
    session.reply("response", frame["id"], data=result)


@command("ping", Frame)
async def ping(session: Session, frame: dict[str, Any]) -> None:
    session.reply("pong", frame["id"])


@command("request", RequestFrame)
async def request(session: Session, frame: dict[str, Any]) -> None:
    op = session.dispatcher.operations.get((frame["resource"], frame["action"]))
    if op is None:
        raise BadRequest(
            f"unknown operation {frame['resource']}/{frame['action']}",
            {"operations": sorted(f"{r}/{a}" for r, a in session.dispatcher.operations)},
        )
    data = await op.run(session.ctx(), frame["payload"])
    session.reply("response", frame["id"], data=data)


COMMANDS = (subscribe, unsubscribe, publish, ping, request)


class Dispatcher:
    """Runs one client frame: decode, validate, call its command, turn errors into frames."""

    def __init__(
        self,
        hub: Hub,
        policy: ChannelPolicy,
        config: Config,
        operations: dict[tuple[str, str], Operation],
        services: Callable[[], Services],
        commands: tuple[Command, ...] = COMMANDS,
        adopt: Callable[[dict[str, Any]], Dialect | None] | None = None,
        auth: Authenticator | None = None,
    ) -> None:
        self.hub = hub
        self.policy = policy
        self.config = config
        self.operations = operations
        self.services = services
        self.commands = {c.type: c for c in commands}
        self.public_types = sorted(c.type for c in commands if not c.internal)
        # A native socket's first frame in a seed's protocol switches it to that dialect.
        self.adopt = adopt
        # Checks the token of a `refresh` frame.
        self.auth = auth

    async def join(
        self,
        conn: Connection,
        channel: str,
        since: Position | None = None,
        reply: dict[str, Any] | None = None,
        snapshot: bool = False,
        counted: bool = False,
        max_rate: float | None = None,
    ) -> None:
        """Subscribe (permission already checked) with what the channel sends first: the
        readings snapshot when asked for, a chat room's recent history unless recovering."""
        loader = None
        if snapshot:
            loader = _readings_snapshot(self.services(), channel)
        elif (
            since is None
            and self.config.chat.history_on_join
            and (room := room_of(channel)) is not None
        ):
            loader = _chat_history(self.services(), channel, room)
        await self.hub.subscribe(conn, channel, since, reply, loader, counted, max_rate)

    async def handle(self, conn: Connection, data: str) -> None:
        frame_id: Any = None
        try:
            try:
                raw = codec.loads(data)
            except codec.JSONDecodeError as exc:
                raise InvalidJson(f"invalid JSON: {exc}") from None
            if not isinstance(raw, dict):
                raise BadRequest("a frame must be a JSON object")
            if conn.dialect is None and self.adopt is not None:
                conn.dialect = self.adopt(raw)
            if conn.dialect is not None:
                raw = conn.dialect.inbound(raw)
            frame_id = raw.get("id") if isinstance(raw.get("id"), str | int) else None
            kind = raw.get("type")
            known = {"types": self.public_types}
            if kind is None:
                raise UnknownType('a frame needs a "type": one of the types listed', known)
            cmd = self.commands.get(kind) if isinstance(kind, str) else None
            if cmd is None or (cmd.internal and conn.dialect is None):
                raise UnknownType(f"unknown frame type {kind!r}", known)
            try:
                frame = cmd.schema.load(raw)
            except ValidationError as exc:
                raise ValidationFailed("invalid frame", exc.messages) from None
            await cmd.fn(Session(conn, self), frame)
        except ApiError as exc:
            conn.send(frames.error(exc, frame_id))
        except Exception:
            log.exception("frame handler failed for %s", conn.client_id)
            conn.send(frames.error(ApiError(), frame_id))
