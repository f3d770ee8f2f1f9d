"""Every error fsdgraph raises on purpose.

::

    FsdError
    ├── InputError              bad user input: a file, line or field and what was expected
    │   ├── GraphError          a graph that cannot be compiled (shape, dtype, NaN, empty)
    │   └── ConfigError         an invalid option or configuration value
    ├── TransportError          a transport request failed
    │   ├── NotFound            get/delete of a key or queue that does not exist
    │   └── MessageTooLarge     a message or batch above the configured limit
    ├── ProtocolError           a malformed or inconsistent chunk arrived
    └── RunError                a distributed run failed: names worker, layer, what was missing
        └── RunTimeout          ... because nothing arrived before a deadline

The CLI maps ``InputError`` to exit code 2 and ``FsdError`` otherwise to exit code 3
(see ``fsdgraph.cli``). Nothing else is caught there, so a bug still shows its traceback.
"""

from __future__ import annotations


class FsdError(Exception):
    """Base class of every error fsdgraph raises on purpose."""


class InputError(FsdError):
    """Bad user input. The message names the file/line or the field and what was expected."""


class GraphError(InputError):
    """A model graph that cannot be compiled."""


class ConfigError(InputError):
    """An invalid option or configuration value."""


class TransportError(FsdError):
    """A transport request failed. ``retryable`` is true for a failure that may pass if the same
    request is tried again later (throttling, a service fault); see :mod:`fsdgraph.retry`."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class NotFound(TransportError):
    """The key, queue or topic does not exist."""


class MessageTooLarge(TransportError):
    """A message or a batch exceeds the configured size limit."""


class ProtocolError(FsdError):
    """A chunk that does not follow the channel protocol."""


class RunError(FsdError):
    """A distributed run failed.

    ``worker`` and ``layer`` say where, when known; ``details`` carries what the workers reported
    (including remote tracebacks as text).
    """

    def __init__(
        self,
        message: str,
        *,
        worker: int | None = None,
        layer: int | None = None,
        details: str = "",
    ) -> None:
        super().__init__(message)
        self.worker = worker
        self.layer = layer
        self.details = details


class RunTimeout(RunError):
    """A distributed run failed because something did not arrive before its deadline."""
