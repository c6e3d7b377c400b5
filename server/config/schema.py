"""Marshmallow schemas derived from the config dataclasses' field types, so a setting is
declared once (in server/config/sections.py), and the one-line reading of a validation error."""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Mapping
from typing import Any, Literal

from marshmallow import RAISE, Schema, fields, post_load, validate

__all__ = ["first_error", "schema_for"]


class WholeNumber(fields.Integer):
    """An integer from YAML or an environment string; 80.5 is refused, not truncated."""

    def _validated(self, value: Any) -> int:
        if isinstance(value, float) and not value.is_integer():
            raise self.make_error("invalid")
        return super()._validated(value)


class UpperChoice(fields.String):
    """A Literal choice given in any case: `warning` is `WARNING`."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        text = super()._deserialize(value, attr, data, **kwargs)
        return text.upper()


def _marshmallow_field(
    tp: Any, check: validate.Validator | None, upper: bool = False
) -> fields.Field:
    origin = typing.get_origin(tp)
    kw: dict[str, Any] = {"required": False}
    if check is not None:
        kw["validate"] = check
    if tp is bool:
        return fields.Boolean(**kw)
    if tp is int:
        return WholeNumber(**kw)
    if tp is float:
        return fields.Float(allow_nan=False, **kw)
    if tp is str:
        return fields.String(**kw)
    if origin is Literal:
        kind = UpperChoice if upper else fields.String
        return kind(validate=validate.OneOf(typing.get_args(tp)), required=False)
    if origin is list:
        (item,) = typing.get_args(tp)
        inner = (
            fields.Nested(schema_for(item))
            if isinstance(item, type) and dataclasses.is_dataclass(item)
            else _marshmallow_field(item, None)
        )
        return fields.List(inner, **kw)
    if origin is dict:
        _, value = typing.get_args(tp)
        return fields.Dict(keys=fields.String(), values=fields.Nested(schema_for(value)), **kw)
    raise TypeError(f"no marshmallow field for {tp!r}")


@functools.cache
def schema_for(cls: type) -> Schema:
    """A marshmallow schema that loads a mapping into an instance of dataclass `cls`."""
    hints = typing.get_type_hints(cls)
    attrs: dict[str, Any] = {
        f.name: _marshmallow_field(
            hints[f.name], f.metadata.get("check"), f.metadata.get("upper", False)
        )
        for f in dataclasses.fields(cls)
    }

    def make(self: Schema, data: dict[str, Any], **_: Any) -> Any:
        return cls(**data)

    attrs["make"] = post_load(make)
    attrs["Meta"] = type("Meta", (), {"unknown": RAISE})
    return Schema.from_dict(attrs, name=f"{cls.__name__}Schema")()


# Levels marshmallow adds to error paths that name no setting (Dict values, whole objects).
_NOT_KEYS = frozenset({"value", "_schema"})


def first_error(messages: Any, path: tuple[str, ...] = ()) -> tuple[str, str]:
    if isinstance(messages, Mapping):
        key, value = next(iter(messages.items()))
        return first_error(value, path if key in _NOT_KEYS else (*path, str(key)))
    if isinstance(messages, list) and messages:
        if all(isinstance(m, str) for m in messages):
            return ".".join(path), " ".join(messages)
        return first_error(messages[0], path)
    return ".".join(path), str(messages)
