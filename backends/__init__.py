"""Backend plugins: compute plus transports (see :mod:`fsdgraph.backend` for the interface).

Backends are found through the entry-point group ``fsdgraph.backends`` (:mod:`fsdgraph.plugins`
says how, and which wins when two share a name); a third party registers its own in its package
metadata::

    [options.entry_points]
    fsdgraph.backends =
        mycloud = mypkg.backend:MyCloudBackend

``local`` (the embedded default), ``inproc`` (workers as tasks of one process) and ``aws`` are
always available, even without installed metadata (``aws`` needs the ``aws`` extra).

>>> get_backend("local").name
'local'
"""

from __future__ import annotations

from fsdgraph.backend import Backend
from fsdgraph.plugins import Registry

# Found without installed metadata too: a Lambda package carries the code, not the dist-info.
BACKENDS: Registry[Backend] = Registry("fsdgraph.backends", Backend, {
    "local": "fsdgraph.backends.local:LocalBackend",
    "inproc": "fsdgraph.backends.inproc:InProcBackend",
    "aws": "fsdgraph.backends.aws:AwsBackend",
}, hints={"aws": "pip install 'fsdgraph[aws]'", "ray": "pip install 'fsdgraph[ray]'"})


def backend_names() -> list[str]:
    """Every known backend name."""
    return BACKENDS.names()


def get_backend(name: str) -> type[Backend]:
    """The backend class registered as ``name``."""
    return BACKENDS.load(name)


__all__ = ["BACKENDS", "backend_names", "get_backend"]
