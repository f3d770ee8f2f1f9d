"""Dataclasses that cross a process boundary as JSON: read back field by field, checked.

A worker event, a backend's description of its session: whatever one process writes and another
reads is a frozen dataclass. :func:`from_json` rebuilds one from parsed JSON and refuses, with a
:class:`~fsdgraph.errors.ProtocolError` naming the field, a missing field, an unknown one or a
value of the wrong type (checked against the field's annotation: ``int``, ``float``, ``str``,
``bool``, ``dict[...]``, ``list[...]``, ``tuple[...]`` and ``X | None``).

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Where:
...     root: str
...     depth: int = 0
>>> from_json(Where, {"root": "/tmp", "depth": 2})
Where(root='/tmp', depth=2)
>>> from_json(Where, {"root": "/tmp", "depth": "2"}, "the description")
Traceback (most recent call last):
...
fsdgraph.errors.ProtocolError: the description: field 'depth' must be int, got str
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from fsdgraph.errors import ProtocolError

T = TypeVar("T")


def from_json(cls: type[T], data: object, what: str | None = None) -> T:
    """An instance of dataclass ``cls`` from ``data`` (parsed JSON), every field checked."""
    what = what or cls.__name__
    if not isinstance(data, Mapping):
        raise ProtocolError(f"{what} must be a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ProtocolError(f"{what} has unknown fields {unknown}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ProtocolError(f"{what} has no field {name!r}")
            continue
        value = data[name]
        if not _matches(value, hints[name]):
            raise ProtocolError(f"{what}: field {name!r} must be {_describe(hints[name])}, "
                                f"got {type(value).__name__}")
        values[name] = tuple(value) if _origin(hints[name]) is tuple else value
    return cls(**values)


def _origin(hint: Any) -> Any:
    return typing.get_origin(hint) or hint


def _matches(value: object, hint: Any) -> bool:
    origin = _origin(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if origin is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (tuple, list):  # JSON has only arrays
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    return isinstance(value, origin)


def _describe(hint: Any) -> str:
    if _origin(hint) in (types.UnionType, typing.Union):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "null"
    origin = _origin(hint)
    names = {tuple: "a list", list: "a list", dict: "an object"}
    return names.get(origin, str(getattr(origin, "__name__", origin)))
