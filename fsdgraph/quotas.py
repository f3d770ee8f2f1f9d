"""Service quotas: how many of a thing, and how fast, a run may use.

:class:`~fsdgraph.transport.Limits` says how *large* one message, batch, object or invocation
event may be; :class:`Quotas` says how *many*: concurrent functions, filter policies per topic and
per account, request rates per S3 prefix. The defaults are AWS's (docs/aws.md lists each with its
source and which quota to raise for what worker count). They are data, not constants in code:

* the scheduler checks a run against them before anything is created
  (:func:`check_workers`) and the channels size their resources by them (the queue channel's
  topic shards, the object channel's polling rate);
* the local backend and the shipped local AWS servers *enforce* them, so a test fails where AWS
  would;
* users override them in the ``[quotas]`` table of the config file or with
  ``FSDGRAPH_QUOTA_<NAME>`` variables, once their account's quotas are raised.

>>> Quotas().filter_policies_per_topic
200
>>> load_quotas(environ={"FSDGRAPH_QUOTA_LAMBDA_CONCURRENCY": "3000"}).lambda_concurrency
3000
>>> check_workers(Quotas(lambda_concurrency=10), 16)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
fsdgraph.errors.ConfigError: 16 workers need 16 concurrent functions, but the quota ...
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fsdgraph.config import read_settings
from fsdgraph.errors import ConfigError

#: What a quota is called where a user raises it (AWS Service Quotas names and codes).
WHERE_TO_RAISE = {
    "lambda_concurrency": "Lambda 'Concurrent executions' (Service Quotas L-B99A9384)",
    "filter_policies_per_topic": "SNS 'Filter policies per topic' (L-B96EDA7D)",
    "filter_policies_per_account": "SNS 'Filter policies per account' (L-4126E74A)",
    "subscriptions_per_topic": "SNS 'Subscriptions per standard topic'",
    "topics_per_account": "SNS 'Topics per account' (L-61103206)",
}


@dataclass(frozen=True)
class Quotas:
    """Counts and rates a run must stay within; AWS's defaults (docs/aws.md has the sources).

    Every quota must be a positive number, else :class:`~fsdgraph.errors.ConfigError`.
    """

    #: Functions running at once in the account and region (Lambda's default: 1000).
    lambda_concurrency: int = 1000
    #: The longest function timeout Lambda allows, seconds (a hard limit).
    lambda_max_timeout_s: float = 900.0
    #: SNS subscriptions with a filter policy on one topic (200) and in the account (10 000).
    filter_policies_per_topic: int = 200
    filter_policies_per_account: int = 10_000
    subscriptions_per_topic: int = 12_500_000
    topics_per_account: int = 100_000
    #: S3 requests per second per partitioned prefix (GET/HEAD 5 500; PUT/DELETE 3 500).
    s3_get_per_prefix_s: float = 5_500.0
    s3_put_per_prefix_s: float = 3_500.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ConfigError(f"quota {f.name} must be a positive number, got {value!r}")

    @classmethod
    def unlimited(cls) -> Quotas:
        """No quota at all: backends whose capacity is bounded by nothing but the machine."""
        values: dict[str, Any] = {f.name: (math.inf if f.type == "float" else 2**62)
                                  for f in fields(cls)}
        return cls(**values)


def load_quotas(path: str | Path | None = None,
                environ: Mapping[str, str] | None = None) -> Quotas:
    """AWS's defaults, overridden by the config file's ``[quotas]`` table, then by the
    ``FSDGRAPH_QUOTA_<NAME>`` environment variables."""
    environ = os.environ if environ is None else environ
    kinds = {f.name: (float if f.type == "float" else int) for f in fields(Quotas)}
    found = read_settings(path, "quotas", kinds, "FSDGRAPH_QUOTA_", environ)
    try:
        return Quotas(**{key: value for key, (value, _) in found.items()})
    except ConfigError as exc:
        where = "; ".join(sorted({w for _, w in found.values()}))
        raise ConfigError(f"{where}: {exc}") from exc


def exceeded(quota: str, need: float, have: float, what: str) -> ConfigError:
    """The error for a run that needs ``need`` of ``quota`` where the account has ``have``."""
    raise_it = WHERE_TO_RAISE.get(quota, quota)
    return ConfigError(f"{what}, but the quota {quota} is {have:g}: raise {raise_it} to at "
                       f"least {need:g} (and set quotas.{quota} in the config file), or use "
                       f"fewer workers")


def check_workers(quotas: Quotas, workers: int) -> None:
    """ConfigError unless ``workers`` functions may run at once: every worker of a run waits
    for its peers, so a run whose workers cannot all run together never ends."""
    if workers > quotas.lambda_concurrency:
        raise exceeded("lambda_concurrency", workers, quotas.lambda_concurrency,
                       f"{workers} workers need {workers} concurrent functions")
