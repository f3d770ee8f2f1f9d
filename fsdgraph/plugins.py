"""Plugins found through entry points: one registry helper for backends and channels.

A third party adds a backend or a channel in its own package metadata, without touching this
repository::

    [options.entry_points]
    fsdgraph.backends =
        mycloud = mypkg.backend:MyCloudBackend
    fsdgraph.channels =
        pigeon = mypkg.channel:PigeonChannel

**One precedence rule**: an installed entry point wins; the built-in table is the fallback, so
that a function package that carries the code but no ``dist-info`` metadata (a Lambda zip) still
finds the plugins fsdgraph ships. Names are compared exactly.

>>> from fsdgraph.backend import Backend
>>> builtin = {"local": "fsdgraph.backends.local:LocalBackend"}
>>> registry = Registry("fsdgraph.example_backends", Backend, builtin)  # a group nobody uses
>>> registry.load("local").__name__
'LocalBackend'
>>> registry.load("nope")
Traceback (most recent call last):
...
fsdgraph.errors.ConfigError: unknown example_backend 'nope'; known: local
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar, cast

from fsdgraph.errors import ConfigError

T = TypeVar("T")


def installed(group: str) -> tuple[EntryPoint, ...]:
    """The entry points of ``group``, read once per process and search path: reading them scans
    every installed distribution's metadata (milliseconds each time), and a worker looks up two
    plugins before its first layer. A plugin installed into a path already read is seen by the
    next process."""
    return _installed(group, tuple(sys.path))


@functools.cache
def _installed(group: str, path: tuple[str, ...]) -> tuple[EntryPoint, ...]:
    return tuple(entry_points(group=group))


class Registry(Generic[T]):
    """The classes of one entry-point ``group`` that subclass ``base``."""

    def __init__(self, group: str, base: type, builtin: Mapping[str, str],
                 hints: Mapping[str, str] | None = None) -> None:
        self.group = group
        self.base = base
        self.builtin = dict(builtin)
        #: What to install when a built-in plugin's own dependency is missing, by name.
        self.hints = dict(hints or {})
        self.kind = group.rsplit(".", 1)[-1].rstrip("s")  # "backend", "channel"

    def names(self) -> list[str]:
        """Every known name: installed entry points and built-ins."""
        return sorted(set(self.builtin) | {ep.name for ep in installed(self.group)})

    def load(self, name: str) -> type[T]:
        """The class registered as ``name``; a ConfigError saying what is known otherwise."""
        try:
            for ep in installed(self.group):
                if ep.name == name:
                    cls = ep.load()
                    break
            else:
                if name not in self.builtin:
                    raise ConfigError(f"unknown {self.kind} {name!r}; known: "
                                      f"{', '.join(self.names())}")
                module, _, attr = self.builtin[name].partition(":")
                cls = getattr(importlib.import_module(module), attr)
        except ImportError as exc:  # a plugin's own dependency is missing
            hint = f" ({self.hints[name]})" if name in self.hints else ""
            raise ConfigError(f"{self.kind} {name!r} cannot be loaded: {exc}{hint}") from exc
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise ConfigError(f"{self.kind} {name!r} does not name a fsdgraph "
                              f"{self.base.__name__} subclass")
        return cast("type[T]", cls)
