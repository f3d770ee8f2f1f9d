"""AWS list prices (:class:`Prices`), a few regions' tables, the paper's prices, and the billing
units the bills use (see the rules in :mod:`fsdgraph.cost`, which also exports every name here).

A module of its own, outside :mod:`fsdgraph.cost`: backends and the auto channel read prices at
run time, and a worker that does so loads neither bills nor estimates."""

from __future__ import annotations

import json
import math
import os
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from fsdgraph import defaults
from fsdgraph.errors import ConfigError
from fsdgraph.transport import CHUNK_BYTES as CHUNK_BYTES  # SNS/SQS bill per started 64 KiB

#: Bytes in a billed GB of data transfer.
GB_BYTES = 2**30
#: Lambda's memory range, in MB.
MEMORY_RANGE = (128, 10240)
#: 1769 MB is the size that gets one full vCPU.
DEFAULT_MEMORY_MB = defaults.MEMORY_MB


@dataclass(frozen=True)
class Prices:
    """AWS list prices in USD, in the units AWS publishes them in (us-east-1 by default).

    >>> Prices().sqs_requests_per_m
    0.4
    >>> Prices.for_region("eu-central-1").s3_put_per_k
    0.0054
    """

    region: str = "us-east-1"
    lambda_requests_per_m: float = 0.20  #: per million invocations
    lambda_gb_s: float = 0.0000166667  #: per GB-second, x86
    sns_publish_per_m: float = 0.50  #: per million publish requests (64 KiB units)
    sqs_requests_per_m: float = 0.40  #: per million requests (64 KiB units), standard queues
    s3_put_per_k: float = 0.005  #: per thousand PUT, COPY, POST or LIST requests
    s3_get_per_k: float = 0.0004  #: per thousand GET requests
    data_out_gb: float = 0.09  #: per GB out to the internet (first 10 TB/month)
    in_region_gb: float = 0.0  #: per GB between Lambda and SNS/SQS/S3 in the same region

    def __post_init__(self) -> None:
        if not isinstance(self.region, str):
            raise ConfigError(f"price field 'region' must be a string, got {self.region!r}")
        for f in fields(self):
            if f.name != "region":
                value = getattr(self, f.name)
                if not _is_price(value):
                    raise ConfigError(f"price field {f.name!r} must be a non-negative number, "
                                      f"got {value!r}")

    @staticmethod
    def for_region(name: str) -> Prices:
        """The list prices of region ``name`` (see :data:`REGIONS`)."""
        try:
            return REGIONS[name]
        except KeyError:
            known = ", ".join(sorted(REGIONS))
            raise ConfigError(f"no prices for region {name!r}; known regions: {known} "
                              f"(or give Prices(...) or Prices.from_file(path))") from None

    @staticmethod
    def from_file(path: str | os.PathLike[str]) -> Prices:
        """Prices from a ``.toml`` or ``.json`` file: the field names of :class:`Prices` at the top
        level or under a ``prices`` table. ``region`` picks the base table (default us-east-1),
        the other fields override it. Errors name the file and the field.

        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "prices.toml"
        >>> _ = path.write_text('region = "eu-west-2"\\nsqs_requests_per_m = 0.5\\n')
        >>> p = Prices.from_file(path)
        >>> p.region, p.sqs_requests_per_m, p.s3_put_per_k
        ('eu-west-2', 0.5, 0.0053)
        """
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{p}: cannot read the price file: {exc}") from exc
        try:
            if p.suffix == ".json":
                data: Any = json.loads(text)
            elif p.suffix == ".toml":
                data = tomllib.loads(text)
            else:
                raise ConfigError(f"{p}: a price file must end in .toml or .json")
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            kind = "JSON" if p.suffix == ".json" else "TOML"
            raise ConfigError(f"{p}: not valid {kind}: {exc}") from exc
        if isinstance(data, dict) and isinstance(data.get("prices"), dict):
            data = data["prices"]
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a table of prices, got {type(data).__name__}")
        names = [f.name for f in fields(Prices)]
        for key in data:
            if key not in names:
                raise ConfigError(f"{p}: unknown field {key!r}; known fields: {', '.join(names)}")
        region = data.get("region", "us-east-1")
        if not isinstance(region, str):
            raise ConfigError(f"{p}: field 'region' must be a string, got {region!r}")
        if region in REGIONS:
            base = REGIONS[region]
        elif set(names) - {"region"} <= set(data):
            base = Prices(region=region)  # every price given: any region name will do
        else:
            raise ConfigError(f"{p}: field 'region': no built-in prices for {region!r} (known: "
                              f"{', '.join(sorted(REGIONS))}); give every price field for it")
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key == "region":
                continue
            if not _is_price(value):
                raise ConfigError(f"{p}: field {key!r} must be a non-negative number, "
                                  f"got {value!r}")
            values[key] = float(value)
        return replace(base, **values)


def _is_price(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0)


#: A few regions' list prices (Lambda x86, SNS standard, SQS standard, S3 Standard requests,
#: first-tier internet egress). Other regions: give your own ``Prices``.
REGIONS: dict[str, Prices] = {
    "us-east-1": Prices(),
    "us-east-2": Prices(region="us-east-2"),
    "us-west-2": Prices(region="us-west-2"),
    "eu-west-1": Prices(region="eu-west-1"),
    "eu-west-2": Prices(region="eu-west-2", s3_put_per_k=0.0053, s3_get_per_k=0.00042),
    "eu-central-1": Prices(region="eu-central-1", s3_put_per_k=0.0054, s3_get_per_k=0.00043),
}

#: The prices of the paper's spreadsheet: Lambda at $2.1e-6 per 128 MB-s (= $1.68e-5 per GB-s),
#: S3 at $5.3 per million PUT/LIST and $0.42 per million GET (eu-west-2's S3 prices).
PAPER_PRICES = Prices(region="paper spreadsheet", lambda_gb_s=2.1e-6 * 8,
                      s3_put_per_k=0.0053, s3_get_per_k=0.00042)
