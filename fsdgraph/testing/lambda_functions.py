"""Lambda functions as the invoke endpoint (:mod:`fsdgraph.testing.lambda_endpoint`) sees them:
stored in moto, named by requests, answered about in Lambda's format.

moto holds every function (CreateFunction, GetFunction, PutFunctionConcurrency, ...); the
endpoint keeps nothing of its own and asks moto through :class:`Upstream` each time it needs a
function's configuration. A request names a function the ways Lambda accepts
(:func:`parse_function`: name, partial ARN or ARN, with a qualifier); a :class:`Function` is what
running it takes, including the environment its handler's processes get. Errors the endpoint
answers itself are :class:`ApiError`, in Lambda's format, so botocore raises the same exceptions as
against AWS.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from fsdgraph.testing.lambda_runtime import (
    DEFAULT_MEMORY_MB,
    DEFAULT_TIMEOUT_S,
    ENV_DEADLINE,
    ENV_FUNCTION_ARN,
    ENV_REQUEST_ID,
)

__all__ = ["DEFAULT_REGION", "ApiError", "Function", "FunctionRef", "Upstream", "parse_function",
           "signing_region"]

#: Where the region comes from when neither the ARN nor the request's signature names one.
DEFAULT_REGION = "us-east-1"
#: GetAccountSettings' fixed limits (Lambda's: 75 GB of code, 250 MB unzipped, 50 MB zipped).
CODE_LIMITS = {"TotalCodeSize": 80_530_636_800, "CodeSizeUnzipped": 262_144_000,
               "CodeSizeZipped": 52_428_800}
#: How long a request to the upstream server may take.
UPSTREAM_TIMEOUT_S = 60.0

# The pattern of a Lambda function name, partial ARN or ARN, with an optional qualifier.
_NAME = r"(?P<name>[A-Za-z0-9_-]{1,140})(?::(?P<qualifier>[A-Za-z0-9$_-]{1,128}))?"
_FUNCTION_ARN = re.compile(
    rf"^arn:aws[a-zA-Z-]*:lambda:(?P<region>[a-z0-9-]+):(?P<account>\d{{12}}):function:{_NAME}$")
_PARTIAL_ARN = re.compile(rf"^(?P<account>\d{{12}}):function:{_NAME}$")
_FUNCTION_NAME = re.compile(rf"^{_NAME}$")
# "Credential=AKID/20240101/eu-west-1/lambda/aws4_request" in a SigV4 Authorization header.
_CREDENTIAL_SCOPE = re.compile(r"Credential=[^/,\s]+/\d{8}/(?P<region>[a-z0-9-]+)/")


class ApiError(Exception):
    """An error answered in Lambda's format: HTTP ``status``, ``x-amzn-ErrorType: code``, and
    ``extra`` members in the body (TooManyRequestsException's ``Reason``)."""

    def __init__(self, status: int, code: str, message: str,
                 extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = dict(extra or {})


@dataclass(frozen=True)
class FunctionRef:
    """What a FunctionName (plus ``?Qualifier=``) designates."""

    name: str
    qualifier: str | None
    #: From the ARN; None for a plain name or a partial ARN.
    region: str | None


def parse_function(identifier: str, qualifier: str | None) -> FunctionRef:
    """Parse a function name, partial ARN or ARN, each optionally ending in ``:qualifier``."""
    for pattern in (_FUNCTION_ARN, _PARTIAL_ARN, _FUNCTION_NAME):
        match = pattern.match(identifier)
        if match is not None:
            break
    else:
        raise ApiError(400, "ValidationException",
                       f"1 validation error detected: Value '{identifier}' at 'functionName' "
                       "failed to satisfy constraint: Member must be a function name, a partial "
                       "ARN or an ARN")
    derived = match["qualifier"]
    if derived and qualifier and derived != qualifier:
        raise ApiError(400, "InvalidParameterValueException",
                       "The derived qualifier from the function name does not match the "
                       "specified qualifier.")
    region = match.groupdict().get("region")
    return FunctionRef(match["name"], derived or qualifier or None, region)


def signing_region(authorization: str | None) -> str | None:
    """The region of a SigV4 ``Authorization`` header's credential scope."""
    match = _CREDENTIAL_SCOPE.search(authorization or "")
    return match["region"] if match else None


@dataclass(frozen=True)
class Function:
    """What running one function needs, from its GetFunction ``Configuration``.

    A container image function (``PackageType`` ``Image``) runs like a zip one, from the
    server's own Python environment: its handler is the first word of its
    ``ImageConfig.Command``. The image itself (its ENV, ENTRYPOINT, files) is never read, so a
    function without a Command cannot run here and its invocations are refused.
    """

    name: str
    #: The function's ARN as invoked: unqualified, or ending in the qualifier that was given.
    invoked_arn: str
    version: str
    handler: str
    timeout_s: int
    memory_mb: int
    variables: Mapping[str, str]
    region: str

    @classmethod
    def from_configuration(cls, config: Mapping[str, Any], ref: FunctionRef,
                           region: str) -> Function:
        # A qualified lookup may answer with a qualified ARN; keep the first seven fields.
        arn = ":".join(str(config.get("FunctionArn", "")).split(":")[:7])
        if ref.qualifier:
            arn = f"{arn}:{ref.qualifier}"
        variables = (config.get("Environment") or {}).get("Variables") or {}
        return cls(
            name=str(config["FunctionName"]), invoked_arn=arn,
            version=str(config.get("Version", "$LATEST")), handler=_handler(config),
            timeout_s=int(config.get("Timeout") or DEFAULT_TIMEOUT_S),
            memory_mb=int(config.get("MemorySize") or DEFAULT_MEMORY_MB),
            variables={str(k): str(v) for k, v in variables.items()}, region=region,
        )

    @property
    def executed_arn(self) -> str:
        """The ARN of the version that runs, as invocation records name it (``...:$LATEST``)."""
        if len(self.invoked_arn.split(":")) > 7:
            return self.invoked_arn
        return f"{self.invoked_arn}:{self.version}"

    def base_environment(self) -> dict[str, str]:
        """What every execution's environment starts with: ours, then the function's, then
        Lambda's reserved variables (a zygote's whole environment)."""
        return {
            **os.environ,
            **self.variables,
            "AWS_LAMBDA_FUNCTION_NAME": self.name,
            "AWS_LAMBDA_FUNCTION_VERSION": self.version,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_mb),
            "AWS_LAMBDA_FUNCTION_TIMEOUT": str(self.timeout_s),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.name}",
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "_HANDLER": self.handler,
            ENV_FUNCTION_ARN: self.invoked_arn,
        }

    @staticmethod
    def invocation_environment(request_id: str, deadline: float) -> dict[str, str]:
        """The variables that differ from one execution to the next."""
        return {"AWS_LAMBDA_LOG_STREAM_NAME": request_id, ENV_REQUEST_ID: request_id,
                ENV_DEADLINE: f"{deadline:.3f}"}


def _handler(config: Mapping[str, Any]) -> str:
    """The handler a configuration names: ``Handler``, or an image's ``ImageConfig.Command``."""
    if config.get("PackageType") != "Image":
        return str(config.get("Handler") or "")
    image = (config.get("ImageConfigResponse") or {}).get("ImageConfig") or {}
    command = image.get("Command") or []
    if not command:
        raise ApiError(400, "InvalidParameterValueException",
                       f"function {config.get('FunctionName')} is a container image function "
                       "without ImageConfig.Command: the local endpoint runs handlers from its "
                       "own Python environment and cannot read the image's CMD; create the "
                       "function with ImageConfig={'Command': ['module.handler']}")
    return str(command[0])


class Upstream:
    """The moto server at ``url``, through botocore clients (one per service and region, made on
    first use and kept)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._session: botocore.session.Session | None = None
        self._clients: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def client(self, service: str, region: str) -> Any:
        # Creating botocore clients is not thread-safe; using them is.
        with self._lock:
            client = self._clients.get((service, region))
            if client is None:
                if self._session is None:
                    self._session = botocore.session.get_session()
                config = Config(retries={"mode": "standard", "max_attempts": 3},
                                connect_timeout=10, read_timeout=UPSTREAM_TIMEOUT_S)
                client = self._session.create_client(service, region_name=region,
                                                     endpoint_url=self.url, config=config)
                self._clients[(service, region)] = client
            return client

    def close(self) -> None:
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
        for client in clients:
            client.close()

    def function(self, identifier: str, ref: FunctionRef, region: str) -> Function:
        """The function's configuration; 404 in Lambda's form when missing."""
        # Upstream gets the bare name: moto does not route a name with a qualifier in it, and
        # fails on partial ARNs.
        kwargs: dict[str, str] = {"FunctionName": ref.name}
        if ref.qualifier:
            kwargs["Qualifier"] = ref.qualifier
        try:
            response = self.client("lambda", region).get_function(**kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code, message = str(error.get("Code", "")), str(error.get("Message", ""))
            if code == "ResourceNotFoundException":
                if not message.startswith("Function not found"):
                    message = f"Function not found: {identifier}"
                raise ApiError(404, code, message) from exc
            raise ApiError(500, "ServiceException",
                           f"GetFunction on {self.url} failed: {code}: {message}") from exc
        except BotoCoreError as exc:
            raise ApiError(500, "ServiceException",
                           f"GetFunction on {self.url} failed: {exc}") from exc
        return Function.from_configuration(response["Configuration"], ref, region)

    def account_settings(self, region: str, concurrency: int) -> dict[str, Any]:
        """GetAccountSettings: the concurrency quota, less the functions' reservations."""
        client = self.client("lambda", region)
        functions = [f for page in client.get_paginator("list_functions").paginate()
                     for f in page.get("Functions", [])]
        reserved = 0
        for f in functions:
            try:
                answer = client.get_function_concurrency(FunctionName=f["FunctionName"])
            except ClientError as exc:  # deleted since it was listed
                if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                    continue
                raise
            reserved += int(answer.get("ReservedConcurrentExecutions") or 0)
        return {
            "AccountLimit": {**CODE_LIMITS, "ConcurrentExecutions": concurrency,
                             "UnreservedConcurrentExecutions": max(0, concurrency - reserved)},
            "AccountUsage": {"TotalCodeSize": sum(int(f.get("CodeSize") or 0) for f in functions),
                             "FunctionCount": len(functions)},
        }

