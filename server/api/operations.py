"""@operation: one definition serves a REST route and the WebSocket `request` frame.

The function takes a Ctx and the arguments validated by the operation's schema (path
parameters, query and body merged for REST; the frame's `payload` over WebSocket), so both
transports run the same code and answer the same data or the same ApiError.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from marshmallow import Schema, ValidationError

from server.auth import Principal, require_role
from server.errors import ValidationFailed

if TYPE_CHECKING:
    from server.channels import ChannelPolicy
    from server.config import Config
    from server.hub import Hub
    from server.services import Services


@dataclass(frozen=True, slots=True)
class Ctx:
    """What an operation may use: who calls, and the app's services."""

    principal: Principal
    services: Services
    hub: Hub
    config: Config
    # The one read check (server.channels): history and stats operations ask it.
    policy: ChannelPolicy


Handler = Callable[[Ctx, dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Operation:
    resource: str
    action: str
    method: str
    path: str
    fn: Handler
    schema: type[Schema] | None
    status: int
    # Roles allowed (admin always is); None = anyone who may connect at all.
    roles: tuple[str, ...] | None
    # When set, the whole request body goes under this key instead of being merged.
    body_key: str | None
    # Arguments come in the query string even on POST (seed-compatible endpoints).
    query_args: bool
    # A REST body that is not valid JSON is taken as text (under body_key), not refused.
    text_body: bool
    summary: str

    @property
    def args_in(self) -> str:
        """Where REST clients put the arguments (documentation; all places are merged)."""
        return "query" if self.method in ("GET", "DELETE") or self.query_args else "body"

    def load(self, raw: dict[str, Any]) -> dict[str, Any]:
        if self.schema is None:
            return {}
        try:
            return self.schema().load(raw)
        except ValidationError as exc:
            raise ValidationFailed(details=exc.messages) from None

    def authorize(self, ctx: Ctx) -> None:
        """Unauthorized/Forbidden unless the caller may run this: checked before any input."""
        if self.roles is not None:
            require_role(ctx.principal, self.roles, ctx.config.auth.anonymous_writes)

    async def execute(self, ctx: Ctx, raw: dict[str, Any]) -> Any:
        """Validate the arguments and run (after authorize)."""
        return await self.fn(ctx, self.load(raw))

    async def run(self, ctx: Ctx, raw: dict[str, Any]) -> Any:
        self.authorize(ctx)
        return await self.execute(ctx, raw)


def operation(
    resource: str,
    action: str,
    method: str,
    path: str,
    *,
    schema: type[Schema] | None = None,
    status: int = 200,
    roles: tuple[str, ...] | None = None,
    body_key: str | None = None,
    query_args: bool = False,
    text_body: bool = False,
) -> Callable[[Handler], Handler]:
    def decorate(fn: Handler) -> Handler:
        fn.operation = Operation(  # type: ignore[attr-defined]
            resource,
            action,
            method,
            path,
            fn,
            schema,
            status,
            roles,
            body_key,
            query_args,
            text_body,
            (fn.__doc__ or "").strip().split("\n")[0],
        )
        return fn

    return decorate


def operations_of(*fns: Handler) -> dict[tuple[str, str], Operation]:
    """(resource, action) -> Operation for the given @operation functions."""
    table: dict[tuple[str, str], Operation] = {}
    for fn in fns:
        op: Operation = fn.operation  # type: ignore[attr-defined]
        key = (op.resource, op.action)
        if key in table:
            raise ValueError(f"operation {key} defined twice")
        table[key] = op
    return table
