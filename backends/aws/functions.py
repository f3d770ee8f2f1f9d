"""Compute on AWS Lambda: a worker is one asynchronous invocation of the deployed function.

``Invoke`` with ``InvocationType=Event`` returns as soon as Lambda has queued the event (HTTP
202); the scheduler then learns everything else from the worker's status messages. The deployed
function has Lambda's own retries turned off (see :mod:`fsdgraph.backends.aws.deploy`): a worker
that fails reports it, and one that never starts is found by the scheduler's stall timeout, so a
silent second attempt could only duplicate work.

The event's size is checked by the callers, for every backend alike, before ``invoke``
(:func:`fsdgraph.transport.check_invoke_payload`); it travels as they measured it
(:func:`fsdgraph.transport.invoke_payload`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiobotocore.session import AioSession

from fsdgraph.backend import Functions
from fsdgraph.backends.aws.transports import AwsConfig, _AwsService
from fsdgraph.errors import NotFound, TransportError
from fsdgraph.transport import invoke_payload


class LambdaFunctions(_AwsService, Functions):
    """Invokes ``function`` asynchronously with a JSON event (its size is checked by the caller
    against ``Limits.max_invoke_payload_bytes``, once, in the core)."""

    _services = ("lambda",)

    def __init__(self, config: AwsConfig, function: str, *,
                 session: AioSession | None = None) -> None:
        super().__init__(config, session=session)
        self.function = function

    async def invoke(self, event: Mapping[str, Any]) -> None:
        payload = invoke_payload(event)
        try:
            response = await self._call("lambda", "invoke", f"function {self.function!r}",
                                        FunctionName=self.function, InvocationType="Event",
                                        Payload=payload)
        except NotFound as exc:
            raise NotFound(f"{exc}; deploy it first with `fsdgraph deploy`") from exc
        status = int(response.get("StatusCode", 0))
        if status != 202:
            raise TransportError(f"function {self.function!r}: asynchronous invoke answered "
                                 f"HTTP {status}, expected 202")
