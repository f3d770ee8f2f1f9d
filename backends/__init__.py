"""Backend plugins: compute plus transports (see :mod:`fsdgraph.backend` for the interface).

Backends are found through the entry-point group ``fsdgraph.backends``; a third party registers
its own in its package metadata::

    [options.entry_points]
    fsdgraph.backends =
        mycloud = mypkg.backend:MyCloudBackend

``local`` (the embedded default) and ``aws`` are always available, even without installed
metadata (``aws`` needs the ``aws`` extra).

>>> get_backend("local").name
'local'
"""

from __future__ import annotations

from importlib.metadata import entry_points

from fsdgraph.backend import Backend
from fsdgraph.errors import ConfigError

# Found without installed metadata too: a Lambda package carries the code, not the dist-info.
_BUILTIN = {"local": "fsdgraph.backends.local:LocalBackend",
            "aws": "fsdgraph.backends.aws:AwsBackend"}


def backend_names() -> list[str]:
    """Every known backend name."""
    return sorted(set(_BUILTIN) | {ep.name for ep in entry_points(group="fsdgraph.backends")})


def get_backend(name: str) -> type[Backend]:
    """The backend class registered as ``name``."""
    try:
        for ep in entry_points(group="fsdgraph.backends"):
            if ep.name == name:
                cls = ep.load()
                break
        else:
            if name not in _BUILTIN:
                raise ConfigError(f"unknown backend {name!r}; known: "
                                  f"{', '.join(backend_names())}")
            module, _, attr = _BUILTIN[name].partition(":")
            cls = getattr(__import__(module, fromlist=[attr]), attr)
    except ImportError as exc:  # a plugin's own dependency is missing
        extra = " (pip install 'fsdgraph[aws]')" if name == "aws" else ""
        raise ConfigError(f"backend {name!r} cannot be loaded: {exc}{extra}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise ConfigError(f"backend {name!r} does not name a fsdgraph Backend subclass")
    return cls


__all__ = ["backend_names", "get_backend"]
