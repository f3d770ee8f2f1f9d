"""The AWS backend: workers are AWS Lambda invocations, the queue channel is SNS topics fanning
out to SQS queues, the object channel and staging are S3.

Before the first run, ``fsdgraph deploy`` (or :func:`~fsdgraph.backends.aws.deploy.deploy`)
creates the deployment's function, role and bucket; every run then creates its own queues and
topics, tagged with the run id, and removes them when it ends. Settings come from the ``[aws]``
table of the config file and the environment (:mod:`fsdgraph.backends.aws.config`), including
per-service endpoint URLs, so the whole backend runs against local AWS-API servers too
(docs/aws.md).

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

from fsdgraph.backend import Backend, Services
from fsdgraph.backends.aws.config import (
    DEPLOYMENT_TAG,
    RUN_TAG,
    AwsSettings,
    load_aws_settings,
)
from fsdgraph.backends.aws.functions import LambdaFunctions
from fsdgraph.backends.aws.transports import (
    AwsConfig,
    S3ObjectStore,
    SnsSqsMessageService,
    caller_account,
)
from fsdgraph.control import QueueControlPlane
from fsdgraph.prices import REGIONS, Prices
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


@dataclass
class AwsBackend(Backend):
    """Lambda + SNS/SQS + S3, as deployed by ``fsdgraph deploy``. See the module docstring."""

    name: ClassVar[str] = "aws"

    settings: AwsSettings = field(default_factory=load_aws_settings)

    @classmethod
    def configure(cls, config_file: Path | None = None) -> AwsBackend:
        return cls(load_aws_settings(config_file))

    @property
    def namespace(self) -> str:
        return self.settings.deployment

    async def _account(self) -> str:
        if self.settings.account:
            return self.settings.account
        account = await caller_account(AwsConfig(self.settings.region, self.settings.endpoints,
                                                 profile=self.settings.profile))
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
            limits=asdict(s.limits), tags={DEPLOYMENT_TAG: s.deployment, RUN_TAG: names.run_id})
        async with _services(description, names, profile=s.profile) as services:
            yield services

    @classmethod
    @asynccontextmanager
    async def attach(cls, description: Mapping[str, Any],
                     names: RunNames) -> AsyncIterator[Services]:
        # A function uses its role's credentials, never a profile.
        typed = from_json(AwsDescription, description, "aws backend description")
        async with _services(typed, names, profile=None) as services:
            yield services


@asynccontextmanager
async def _services(description: AwsDescription, names: RunNames,
                    profile: str | None) -> AsyncIterator[Services]:
    """The three AWS services of ``description``, on one botocore session, closed at the end."""
    config = AwsConfig(region=description.region, endpoints=description.endpoints,
                       bucket=description.bucket, prefix=description.prefix,
                       account=description.account, profile=profile)
    limits = Limits(**description.limits)
    session = AioSession(profile=profile)
    objects = S3ObjectStore(config, limits=limits, session=session)
    messages = SnsSqsMessageService(config, limits, session=session, tags=description.tags)
    functions = LambdaFunctions(config, description.function, session=session)
    async with contextlib.AsyncExitStack() as stack:
        for service in (objects, messages, functions):
            await stack.enter_async_context(service)
        yield Services(objects=objects, messages=messages,
                       control=QueueControlPlane(messages, names, limits), functions=functions,
                       limits=limits, description=asdict(description))


__all__ = ["AwsBackend", "AwsDescription", "AwsSettings", "load_aws_settings"]
