"""Settings of the AWS backend: where it runs, what the deployment is called, the limits profile.

They come, highest first, from environment variables and the ``[aws]`` table of the config file
(``$FSDGRAPH_CONFIG_FILE`` or ``~/.fsdgraph/config.toml``), the usual AWS way::

    [aws]
    region = "eu-west-1"          # else AWS_REGION / AWS_DEFAULT_REGION
    profile = "inference"         # else AWS_PROFILE; credentials come from the standard chain
    deployment = "fsdgraph"       # names the function, role, bucket, queues and topics
    memory_mb = 1769
    architecture = "arm64"

    [aws.endpoints]               # else AWS_ENDPOINT_URL_<SERVICE>, then AWS_ENDPOINT_URL
    s3 = "http://127.0.0.1:5000"  # e.g. a moto server or LocalStack

    [aws.limits]                  # the provider's limits profile (fsdgraph.transport.Limits)
    max_message_bytes = 262144

Other fields have the variable ``FSDGRAPH_AWS_<FIELD>`` (``FSDGRAPH_AWS_DEPLOYMENT=...``).
Credentials are never read from here, never stored in the settings and never printed.

>>> s = AwsSettings(region="eu-west-1", deployment="demo")
>>> s.function_name, s.bucket_name("123456789012")
('demo-worker', 'demo-123456789012-eu-west-1')
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fsdgraph.config import coerce, read_table
from fsdgraph.errors import ConfigError
from fsdgraph.transport import Limits, MiB

#: Every AWS service the backend talks to (keys of ``[aws.endpoints]``).
SERVICES = ("s3", "sns", "sqs", "sts", "lambda", "iam", "logs")

#: Lambda's limits, as AWS documents them: SNS and SQS messages and batches 256 KiB, 10 entries
#: per batch, an asynchronous invocation's payload 1 MiB.
AWS_LIMITS = Limits(max_invoke_payload_bytes=1 * MiB)

#: The tag keys on what a deployment (both) and a run (the run's queues and topics) create.
DEPLOYMENT_TAG, RUN_TAG = "fsdgraph:deployment", "fsdgraph:run"

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}[a-z0-9]$")
#: What botocore accepts as a region name (botocore.utils.validate_region_name).
_REGION = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9\-]{0,61}[a-zA-Z0-9])?$")
#: A host name botocore accepts in an endpoint URL (botocore.utils.is_valid_endpoint_url).
_HOST = re.compile(r"^((?!-)[A-Z\d-]{1,63}(?<!-)\.)*((?!-)[A-Z\d-]{1,63}(?<!-))$", re.IGNORECASE)


def endpoint_problem(url: str) -> str | None:
    """What is wrong with an endpoint URL botocore would refuse (with a ValueError traceback),
    or None.

    >>> endpoint_problem("http://127.0.0.1:5000"), endpoint_problem("htp:/x")
    (None, "expected http://HOST[:PORT] or https://HOST[:PORT], got 'htp:/x'")
    """
    expected = f"expected http://HOST[:PORT] or https://HOST[:PORT], got {url!r}"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        return expected
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        return expected
    if not (_HOST.match(host) or (":" in host and "[" in parts.netloc)) or len(host) > 255:
        return f"bad host name {host!r} ({expected})"
    return None


@dataclass(frozen=True)
class AwsSettings:
    """Where and how the AWS backend runs; see the module docstring for where values come from."""

    region: str = "us-east-1"
    #: A named profile of the shared AWS config (the scheduler side only: functions use their
    #: role). None: the standard credential chain.
    profile: str | None = None
    #: Names every resource: function ``<deployment>-worker``, role ``<deployment>-worker``,
    #: queues and topics ``<deployment>-<run id>-...``, the bucket by default.
    deployment: str = "fsdgraph"
    #: Default ``<deployment>-<account id>-<region>`` (bucket names are global).
    bucket: str = ""
    #: Every key the backend writes starts with this.
    prefix: str = "fsdgraph/"
    memory_mb: int = 1769  #: one full vCPU
    timeout_s: int = 900
    architecture: str = "x86_64"
    runtime: str = "python3.12"
    #: Per-service endpoint URLs (see SERVICES); absent: AWS's own for the region.
    endpoints: Mapping[str, str] = field(default_factory=dict)
    limits: Limits = AWS_LIMITS
    #: The account id; empty: asked once from STS.
    account: str = ""
    #: Where ``region`` and each ``endpoints.<service>`` came from (the config file and table,
    #: or the environment variable), for the messages of errors they cause.
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def where(self, setting: str) -> str:
        """``setting`` and where it came from, for messages (``region = 'x' (from ...)``)."""
        value = (self.region if setting == "region"
                 else self.endpoints.get(setting.removeprefix("endpoints."), ""))
        source = self.sources.get(setting, "the default" if setting == "region" else "")
        return f"aws {setting} = {value!r}" + (f" (from {source})" if source else "")

    def __post_init__(self) -> None:
        if not isinstance(self.region, str) or not _REGION.match(self.region):
            raise ConfigError(f"{self.where('region')}: not a region name (expected one like "
                              f"us-east-1)")
        for service, url in self.endpoints.items():
            problem = endpoint_problem(url) if isinstance(url, str) else "expected a URL"
            if problem:
                raise ConfigError(f"{self.where('endpoints.' + service)}: {problem}")
        if not _NAME.match(self.deployment):
            raise ConfigError(
                f"aws deployment {self.deployment!r}: expected 2-32 lowercase letters, digits or "
                f"hyphens, starting and ending with a letter or digit (it names buckets and "
                f"queues)")
        if not 128 <= self.memory_mb <= 10240:
            raise ConfigError(f"aws memory_mb must be in [128, 10240], got {self.memory_mb}")
        if not 1 <= self.timeout_s <= 900:
            raise ConfigError(f"aws timeout_s must be in [1, 900], got {self.timeout_s}")
        if self.architecture not in ("x86_64", "arm64"):
            raise ConfigError(f"aws architecture must be x86_64 or arm64, "
                              f"got {self.architecture!r}")
        unknown = sorted(set(self.endpoints) - set(SERVICES))
        if unknown:
            raise ConfigError(f"aws endpoints: unknown service {unknown[0]!r}; known: "
                              f"{', '.join(SERVICES)}")
        if self.prefix and not self.prefix.endswith("/"):
            raise ConfigError(f"aws prefix must end with '/', got {self.prefix!r}")

    @property
    def function_name(self) -> str:
        return f"{self.deployment}-worker"

    @property
    def role_name(self) -> str:
        return f"{self.deployment}-worker"

    def bucket_name(self, account: str) -> str:
        """The configured bucket, or the deployment's default one in ``account``."""
        return self.bucket or f"{self.deployment}-{account}-{self.region}"

    def with_account(self, account: str) -> AwsSettings:
        return dataclasses.replace(self, account=account)


def load_aws_settings(path: str | Path | None = None,
                      environ: Mapping[str, str] | None = None) -> AwsSettings:
    """Settings from the ``[aws]`` table of the config file, then the environment."""
    environ = os.environ if environ is None else environ
    where, table = read_table(path, "aws", environ)
    kinds = {f.name: f.type for f in fields(AwsSettings)}
    plain = {name for name, kind in kinds.items() if kind in ("str", "int", "str | None")}
    values: dict[str, Any] = {}
    endpoints: dict[str, str] = {}
    limits: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, value in table.items():
        if key == "endpoints" and isinstance(value, dict):
            endpoints.update({k: coerce(f"endpoints.{k}", v, str, f"{where} [aws]")
                              for k, v in value.items()})
            sources.update({f"endpoints.{k}": f"{where} [aws.endpoints]" for k in value})
        elif key == "limits" and isinstance(value, dict):
            known = {f.name for f in fields(Limits)}
            for k, v in value.items():
                if k not in known:
                    raise ConfigError(f"{where}: unknown setting aws.limits.{k}; known: "
                                      f"{', '.join(sorted(known))}")
                limits[k] = coerce(f"limits.{k}", v, int, f"{where} [aws.limits]")
        elif key in plain:
            values[key] = coerce(key, value, int if kinds[key] == "int" else str,
                                 f"{where} [aws]")
            sources[key] = f"{where} [aws]"
        else:
            raise ConfigError(f"{where}: unknown setting aws.{key}; known: "
                              f"{', '.join(sorted([*plain, 'endpoints', 'limits']))}")
    # The AWS tools' own variables first, then ours.
    for env in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        if environ.get(env):
            values["region"] = environ[env]
            sources["region"] = f"environment variable {env}"
            break
    if environ.get("AWS_PROFILE"):
        values["profile"] = environ["AWS_PROFILE"]
    for service in SERVICES:
        for env in (f"AWS_ENDPOINT_URL_{service.upper()}", "AWS_ENDPOINT_URL"):
            if environ.get(env):
                endpoints[service] = environ[env]
                sources[f"endpoints.{service}"] = f"environment variable {env}"
                break
    for key in plain:
        env = f"FSDGRAPH_AWS_{key.upper()}"
        if env in environ:
            values[key] = coerce(key, environ[env], int if kinds[key] == "int" else str,
                                 f"environment variable {env}")
            sources[key] = f"environment variable {env}"
    try:
        limits_obj = dataclasses.replace(AWS_LIMITS, **limits)
    except ConfigError as exc:
        raise ConfigError(f"{where} [aws.limits]: {exc}") from exc
    return AwsSettings(**values, endpoints=endpoints, limits=limits_obj, sources=sources)


def partition(region: str) -> str:
    """The ARN partition of ``region``.

    >>> partition("us-east-1"), partition("cn-north-1"), partition("us-gov-west-1")
    ('aws', 'aws-cn', 'aws-us-gov')
    """
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"
