"""Compute on AWS Lambda: a worker is one asynchronous invocation of the deployed function.

``Invoke`` with ``InvocationType=Event`` returns as soon as Lambda has queued the event (HTTP
202); the scheduler then learns everything else from the worker's status messages. The deployed
function has Lambda's own retries turned off (see :mod:`fsdgraph.backends.aws.deploy`): a worker
that fails reports it, and one that never starts is found by the scheduler's stall timeout, so a
silent second attempt could only duplicate work.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiobotocore.session import AioSession

from fsdgraph.backend import Functions
from fsdgraph.backends.aws.transports import AwsConfig, _AwsService
from fsdgraph.errors import MessageTooLarge, NotFound, TransportError


class LambdaFunctions(_AwsService, Functions):
    """Invokes ``function`` asynchronously with a JSON event of at most ``max_payload_bytes``."""

    _services = ("lambda",)

    def __init__(self, config: AwsConfig, function: str, max_payload_bytes: int, *,
                 session: AioSession | None = None) -> None:
        super().__init__(config, session=session)
        self.function = function
        self.max_payload_bytes = max_payload_bytes

    async def invoke(self, event: Mapping[str, Any]) -> None:
        payload = json.dumps(event, separators=(",", ":")).encode()
        if len(payload) > self.max_payload_bytes:
            raise MessageTooLarge(
                f"invocation event of {len(payload)} bytes for function {self.function!r} "
                f"exceeds the limit of {self.max_payload_bytes} bytes")
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
