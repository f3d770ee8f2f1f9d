"""The AWS backend: workers are AWS Lambda invocations, the queue channel is SNS topics fanning
out to SQS queues, the object channel and staging are S3.

Before the first run, ``fsdgraph deploy`` (or :func:`~fsdgraph.backends.aws.deploy.deploy`)
creates the deployment's function, role, bucket and failures queue; every run then creates its
own queues and topics, tagged with the run id, and removes them when it ends. Settings come from
the ``[aws]`` table of the config file and the environment (:mod:`fsdgraph.backends.aws.config`),
including per-service endpoint URLs, so the whole backend runs against local AWS-API servers too
(docs/aws.md); quotas from its ``[quotas]`` table (:func:`~fsdgraph.quotas.load_quotas`).

Before a run creates anything, :meth:`AwsBackend.preflight` asks Lambda whether it can succeed
(:func:`~fsdgraph.backends.aws.functions.preflight`: the function exists, its timeout covers the
run's, its concurrency holds every worker), then checks the configured quotas.

>>> AwsBackend(AwsSettings(deployment="demo")).namespace
'demo'
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from aiobotocore.session import AioSession
from botocore.exceptions import EndpointConnectionError

from fsdgraph.backend import Backend, Services
from fsdgraph.backends.aws.config import (
    DEPLOYMENT_TAG,
    RUN_TAG,
    AwsSettings,
    load_aws_settings,
)
from fsdgraph.backends.aws.control import AwsControlPlane
from fsdgraph.backends.aws.deploy import failures_queue_name
from fsdgraph.backends.aws.functions import LambdaFunctions, preflight
from fsdgraph.backends.aws.transports import (
    AwsConfig,
    S3ObjectStore,
    SnsSqsMessageService,
    caller_account,
)
from fsdgraph.errors import ConfigError, NotFound, TransportError
from fsdgraph.prices import REGIONS, Prices
from fsdgraph.quotas import Quotas, load_quotas
from fsdgraph.resources import RunNames
from fsdgraph.transport import Limits
from fsdgraph.wire import from_json


@dataclass(frozen=True)
class AwsDescription:
    """What a function is told of its run's AWS session (``Services.description``): where the
    services are, never credentials (a function uses its role's)."""

    region: str
    endpoints: dict[str, str]  #: per-service endpoint URLs (local servers); empty on AWS
    account: str
    bucket: str
    prefix: str
    function: str
    limits: dict[str, int]
    tags: dict[str, str]  #: put on the run's queues and topics
    #: The run's quotas (``dataclasses.asdict`` of :class:`~fsdgraph.quotas.Quotas`): a worker
    #: sizes its channel as the scheduler did. Empty: AWS's defaults.
    quotas: dict[str, float] = field(default_factory=dict)


@dataclass
class AwsBackend(Backend):
    """Lambda + SNS/SQS + S3, as deployed by ``fsdgraph deploy``. See the module docstring."""

    name: ClassVar[str] = "aws"

    settings: AwsSettings = field(default_factory=load_aws_settings)
    quotas: Quotas = field(default_factory=load_quotas)

    @classmethod
    def configure(cls, config_file: Path | None = None) -> AwsBackend:
        return cls(load_aws_settings(config_file), load_quotas(config_file))

    @property
    def namespace(self) -> str:
        return self.settings.deployment

    async def _account(self) -> str:
        if self.settings.account:
            return self.settings.account
        try:
            account = await caller_account(AwsConfig(self.settings.region,
                                                     self.settings.endpoints,
                                                     profile=self.settings.profile))
        except TransportError as exc:
            hint = _unreachable(exc, self.settings, "sts")
            if hint is None:
                raise
            raise hint from exc
        self.settings = self.settings.with_account(account)
        return account

    def prices(self) -> Prices:
        """The list prices of the configured region (us-east-1's where the table has none)."""
        return REGIONS.get(self.settings.region, Prices())

    @asynccontextmanager
    async def session(self, names: RunNames) -> AsyncIterator[Services]:
        s = self.settings
        account = await self._account()
        description = AwsDescription(
            region=s.region, endpoints=dict(s.endpoints), account=account,
            bucket=s.bucket_name(account), prefix=s.prefix, function=s.function_name,
            limits=asdict(s.limits), tags={DEPLOYMENT_TAG: s.deployment, RUN_TAG: names.run_id},
            quotas=asdict(self.quotas))
        async with _services(description, names, profile=s.profile,
                             failures_queue=failures_queue_name(s.deployment)) as services:
            yield services

    @classmethod
    @asynccontextmanager
    async def attach(cls, description: Mapping[str, Any],
                     names: RunNames) -> AsyncIterator[Services]:
        # A function uses its role's credentials, never a profile; it never reads the failures
        # queue (only the scheduler does).
        typed = from_json(AwsDescription, description, "aws backend description")
        async with _services(typed, names, profile=None, failures_queue=None) as services:
            yield services

    async def preflight(self, services: Services, workers: int, timeout_s: float) -> None:
        """ConfigError, saying which setting or quota and what to change, if the function is
        missing, its timeout is shorter than ``timeout_s``, its reserved concurrency or the
        account's unreserved concurrency is below ``workers``, or the configured quotas do not
        hold them (:func:`~fsdgraph.backends.aws.functions.preflight`)."""
        functions = services.functions
        try:
            if isinstance(functions, LambdaFunctions):
                await preflight(functions, services.quotas, workers, timeout_s)
            else:  # services of another making: the configured quotas only
                await super().preflight(services, workers, timeout_s)
        except TransportError as exc:
            hint = _unreachable(exc, self.settings, "lambda")
            if hint is None:
                raise
            raise hint from exc
        if isinstance(services.objects, S3ObjectStore):
            await self._check_bucket(services.objects)

    async def _check_bucket(self, objects: S3ObjectStore) -> None:
        """ConfigError, naming the bucket and saying to deploy, if it does not exist (else a
        run would fail at its first PUT with ``NoSuchBucket``). Other answers (no permission
        to HeadBucket, say) are left for the run's own requests to report."""
        bucket = objects.config.bucket
        try:
            await objects._call("s3", "head_bucket", f"bucket {bucket!r}", Bucket=bucket)
        except NotFound as exc:
            s = self.settings
            named = (f"; or fix the bucket setting ({s.sources['bucket']})"
                     if s.bucket and "bucket" in s.sources else "")
            raise ConfigError(
                f"bucket {bucket!r} does not exist in {s.region} (NoSuchBucket): run `fsdgraph "
                f"deploy` first (it creates the function, role and bucket of deployment "
                f"{s.deployment!r}){named}") from exc
        except TransportError as exc:
            hint = _unreachable(exc, self.settings, "s3")
            if hint is not None:
                raise hint from exc


def _unreachable(exc: TransportError, settings: AwsSettings,
                 service: str) -> ConfigError | None:
    """A ConfigError naming the setting to check when ``exc`` is a connection that could not
    be made (an endpoint URL or a region that leads nowhere); None for any other error."""
    if not isinstance(exc.__cause__, EndpointConnectionError):
        return None
    setting = f"endpoints.{service}" if service in settings.endpoints else "region"
    return ConfigError(f"{exc}: check {settings.where(setting)}, and that the service is "
                       f"reachable from here")


@asynccontextmanager
async def _services(description: AwsDescription, names: RunNames, profile: str | None,
                    failures_queue: str | None) -> AsyncIterator[Services]:
    """The three AWS services of ``description``, on one botocore session, closed at the end."""
    config = AwsConfig(region=description.region, endpoints=description.endpoints,
                       bucket=description.bucket, prefix=description.prefix,
                       account=description.account, profile=profile)
    limits = Limits(**description.limits)
    quotas = (from_json(Quotas, description.quotas, "aws backend description: quotas")
              if description.quotas else Quotas())
    session = AioSession(profile=profile)
    objects = S3ObjectStore(config, limits=limits, session=session)
    # The run's queues accept what SNS delivers from the run's own topics (RunNames.topic:
    # "<namespace>-<run id>-t<shard>"), and from no other.
    messages = SnsSqsMessageService(config, limits, session=session, tags=description.tags,
                                    topics=f"{names.namespace}-{names.run_id}-t*")
    functions = LambdaFunctions(config, description.function, session=session)
    control = AwsControlPlane(messages, names, limits, failures_queue)
    async with contextlib.AsyncExitStack() as stack:
        for service in (objects, messages, functions):
            await stack.enter_async_context(service)
        stack.push_async_callback(control.stop)  # before the clients it uses are closed
        yield Services(objects=objects, messages=messages, control=control, functions=functions,
                       limits=limits, description=asdict(description), quotas=quotas)


__all__ = ["AwsBackend", "AwsControlPlane", "AwsDescription", "AwsSettings",
           "load_aws_settings"]
