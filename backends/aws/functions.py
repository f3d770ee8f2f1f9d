"""Compute on AWS Lambda: a worker is one asynchronous invocation of the deployed function.

``Invoke`` with ``InvocationType=Event`` returns as soon as Lambda has queued the event (HTTP
202); the scheduler then learns everything else from the worker's status messages. The deployed
function has Lambda's own retries turned off (see :mod:`fsdgraph.backends.aws.deploy`): a worker
that fails reports it, so a silent second attempt could only duplicate work. One that cannot
report (it timed out, ran out of memory, or its event expired unrun) leaves a record in the
deployment's failures queue, which the scheduler reads
(:class:`~fsdgraph.backends.aws.control.AwsControlPlane`); the stall timeout catches the rest.

The event's size is checked by the callers, for every backend alike, before ``invoke``
(:func:`fsdgraph.transport.check_invoke_payload`); it travels as they measured it
(:func:`fsdgraph.transport.invoke_payload`).

Before a run creates anything, :func:`preflight` asks Lambda whether the run can succeed: the
function exists, its timeout leaves a worker time to run and hand over (a run may outlast it:
workers continue in new invocations), and the concurrency it may use (its reserved
concurrency, else the account's unreserved concurrency) holds every worker at once, since each
worker waits for its peers and a run whose workers cannot all run never ends. Each refusal is a
:class:`~fsdgraph.errors.ConfigError` naming the setting or quota and what to change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiobotocore.session import AioSession
from botocore.exceptions import BotoCoreError, ClientError

from fsdgraph.backend import Functions
from fsdgraph.backends.aws.transports import AwsConfig, _AwsService, _code, _translate
from fsdgraph.errors import ConfigError, NotFound, TransportError
from fsdgraph.quotas import WHERE_TO_RAISE, Quotas, check_workers
from fsdgraph.transport import invoke_payload

#: Error codes of a request the caller may not make, or an endpoint that does not know it (a
#: local server without GetAccountSettings answers a bare 404).
_UNANSWERED = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation",
                         "UnknownOperationException", "404", "NotFound"})


@dataclass(frozen=True)
class FunctionSettings:
    """What a run depends on of the deployed function."""

    timeout_s: int
    memory_mb: int
    #: Its reserved concurrency: at most this many run at once. None: it draws on the account's
    #: unreserved concurrency.
    reserved_concurrency: int | None


@dataclass(frozen=True)
class AccountConcurrency:
    """Lambda's ``GetAccountSettings``: the account's concurrency in the region, and the part of
    it no function has reserved."""

    total: int
    unreserved: int


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

    async def settings(self) -> FunctionSettings:
        """The function's timeout, memory and reserved concurrency; NotFound if it does not
        exist."""
        what = f"function {self.function!r}"
        config = await self._call("lambda", "get_function_configuration", what,
                                  FunctionName=self.function)
        concurrency = await self._call("lambda", "get_function_concurrency", what,
                                       FunctionName=self.function)
        reserved = concurrency.get("ReservedConcurrentExecutions")
        return FunctionSettings(timeout_s=int(config.get("Timeout", 3)),
                                memory_mb=int(config.get("MemorySize", 128)),
                                reserved_concurrency=None if reserved is None else int(reserved))

    async def account_concurrency(self) -> AccountConcurrency | None:
        """The account's concurrency (``GetAccountSettings``); None where it cannot be asked:
        the action cannot be limited to a resource, so the operator policy leaves it out, and
        a local server may not answer it."""
        client = await self._client("lambda")
        try:
            limits = (await client.get_account_settings())["AccountLimit"]
        except ClientError as exc:
            if _code(exc) in _UNANSWERED:
                return None
            raise _translate(exc, "Lambda account settings") from exc
        except BotoCoreError as exc:
            raise _translate(exc, "Lambda account settings") from exc
        return AccountConcurrency(int(limits["ConcurrentExecutions"]),
                                  int(limits["UnreservedConcurrentExecutions"]))


async def preflight(functions: LambdaFunctions, quotas: Quotas, workers: int,
                    timeout_s: float) -> None:
    """ConfigError, saying what to change, unless a run of ``workers`` workers lasting up to
    ``timeout_s`` seconds can succeed on ``functions``'s function (see the module docstring);
    then the configured ``quotas`` (:func:`~fsdgraph.quotas.check_workers`)."""
    name, region = functions.function, functions.config.region
    try:
        function = await functions.settings()
    except NotFound as exc:
        raise ConfigError(f"function {name!r} does not exist in {region}: deploy it first with "
                          f"`fsdgraph deploy`") from exc
    check_timeout(name, function.timeout_s)
    need = f"{workers} workers need {workers} concurrent functions"
    if function.reserved_concurrency is not None:
        if workers > function.reserved_concurrency:
            raise ConfigError(
                f"{need}, but function {name!r} has a reserved concurrency of "
                f"{function.reserved_concurrency}: raise it to at least {workers} (aws lambda "
                f"put-function-concurrency --function-name {name} "
                f"--reserved-concurrent-executions {workers}) or remove it (aws lambda "
                f"delete-function-concurrency --function-name {name}), or use fewer workers")
    else:
        account = await functions.account_concurrency()
        if account is not None and workers > account.unreserved:
            have = (f"the account's concurrency in {region} is {account.total}"
                    if account.unreserved == account.total else
                    f"only {account.unreserved} of the account's {account.total} concurrent "
                    f"executions in {region} are unreserved, and function {name!r} runs on "
                    f"those")
            raise ConfigError(
                f"{need}, but {have} (Lambda GetAccountSettings): raise "
                f"{WHERE_TO_RAISE['lambda_concurrency']} to at least "
                f"{account.total - account.unreserved + workers}, or use fewer workers")
    check_workers(quotas, workers)


#: The shortest function timeout a run accepts (seconds): a worker must be able to start, run
#: a layer and hand over to its continuation (checkpoint, invoke) within one invocation.
MIN_FUNCTION_TIMEOUT_S = 10


def check_timeout(function: str, function_timeout_s: int) -> None:
    """ConfigError if a function that Lambda stops after ``function_timeout_s`` is too short for
    a worker to run and hand over. A run may last longer than the function's timeout: a worker
    near it checkpoints and continues in a new invocation (:mod:`fsdgraph.worker`).

    >>> check_timeout("demo-worker", 5)
    Traceback (most recent call last):
    ...
    fsdgraph.errors.ConfigError: function 'demo-worker' has a timeout of 5 s: a worker needs at \
least 10 s to run and hand over to its continuation. Raise the function's timeout (timeout_s in \
the [aws] table of the config file, or FSDGRAPH_AWS_TIMEOUT_S, then `fsdgraph deploy` again)
    """
    if function_timeout_s >= MIN_FUNCTION_TIMEOUT_S:
        return
    raise ConfigError(f"function {function!r} has a timeout of {function_timeout_s} s: a worker "
                      f"needs at least {MIN_FUNCTION_TIMEOUT_S} s to run and hand over to its "
                      f"continuation. Raise the function's timeout (timeout_s in the [aws] table "
                      f"of the config file, or FSDGRAPH_AWS_TIMEOUT_S, then `fsdgraph deploy` "
                      f"again)")
