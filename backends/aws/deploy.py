"""Provisioning: ``fsdgraph deploy`` and ``fsdgraph teardown`` (boto3; these calls are naturally
sequential).

A deployment, named by ``AwsSettings.deployment``, is

* an S3 **bucket** (staging, the object channel, the function package), private, with a
  lifecycle rule expiring what a crashed run leaves under ``<prefix>runs/`` after a day;
* an SQS **failures queue** ``<deployment>-failures``, the function's on-failure destination:
  Lambda writes there a record of every invocation that failed (an unhandled error, a timeout,
  a worker killed for memory, an event that waited too long), and each run's scheduler turns the
  records of its own workers into error statuses
  (:class:`~fsdgraph.backends.aws.control.AwsControlPlane`); records are kept an hour;
* an IAM **role** for the function with one inline policy that names only the deployment's
  resources and only the actions a worker uses (:meth:`Deployment.worker_policy`);
* the Lambda **function** ``<deployment>-worker`` running ``fsdgraph.worker.handler`` with the
  configured memory, timeout and architecture, Lambda's retries of asynchronous events off and
  the failures queue as its on-failure destination. Its code is a zip
  (:mod:`~fsdgraph.backends.aws.package`: the scipy kernel, numba does not fit) or a container
  image in ECR (``image_uri``, :mod:`~fsdgraph.backends.aws.image`: the compiled kernel, pinned
  with ``FSDGRAPH_KERNEL=numba``). Lambda cannot change a function's package type in place.

The runs' queues and topics are not part of it: each run creates its own, named
``<deployment>-<run id>-*`` and tagged with the run id, and removes them at its end.
:func:`teardown` removes everything above and any queue or topic a killed run left behind;
:func:`remove_run_leftovers` (``fsdgraph cleanup --backend aws``) removes only what runs older
than an age left (queues, topics, objects under ``runs/``) and keeps the deployment;
:func:`teardown` also removes the image repository ``<deployment>-worker`` that ``fsdgraph deploy
--image`` made, when the function runs an image from it;
:func:`deploy`, :func:`teardown` and :func:`remove_run_leftovers` with ``dry_run=True`` only say
what they would do.

>>> d = Deployment(AwsSettings(deployment="demo", region="eu-west-1"), "123456789012")
>>> [r.kind for r in d.resources()]
['bucket', 'queue', 'role', 'function']
>>> d.failures_queue
'demo-failures'
>>> sorted({a for s in d.worker_policy()["Statement"] for a in s["Action"]})[:3]
['lambda:InvokeFunction', 'logs:CreateLogGroup', 'logs:CreateLogStream']
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsdgraph.backends.aws.config import DEPLOYMENT_TAG, AwsSettings, partition
from fsdgraph.backends.aws.package import HANDLER
from fsdgraph.errors import ConfigError, TransportError
from fsdgraph.kernels.choice import KERNEL_ENV

#: Error codes of a request the caller's policy does not allow.
DENIED = ("AccessDenied", "AccessDeniedException", "AuthorizationError", "UnauthorizedOperation")
#: How long IAM may take to let Lambda assume a new role, or use its new permissions to send to
#: the failures queue (real AWS; instant on local servers).
ROLE_PROPAGATION_S = 60.0
#: The failures queue keeps a record an hour (longer than any run: Lambda's timeout is 15 min).
FAILURES_RETENTION_S = 3600
#: A record one run's scheduler received but that belongs to another run is visible again to
#: the others after this long (seconds).
FAILURES_VISIBILITY_S = 10
#: SQS's largest message: a record carries the invocation's event, up to Lambda's 1 MiB.
FAILURES_MESSAGE_BYTES = 1024 * 1024
#: An image in Amazon ECR, the only registry Lambda runs images from: by tag or by digest.
IMAGE_URI = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/"
    r"(?P<repository>[a-z0-9][a-z0-9._/-]*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})|@(?P<digest>sha256:[0-9a-f]{64}))$")


@dataclass(frozen=True)
class Resource:
    """One AWS resource of a deployment."""

    kind: str
    name: str
    arn: str


@dataclass(frozen=True)
class Deployment:
    """The names, ARNs and policies of ``settings``'s deployment in ``account``."""

    settings: AwsSettings
    account: str

    def _arn(self, service: str, resource: str, *, regional: bool = True) -> str:
        region = self.settings.region if regional else ""
        account = self.account if regional else ""
        return f"arn:{partition(self.settings.region)}:{service}:{region}:{account}:{resource}"

    @property
    def bucket(self) -> str:
        return self.settings.bucket_name(self.account)

    @property
    def bucket_arn(self) -> str:
        return f"arn:{partition(self.settings.region)}:s3:::{self.bucket}"

    @property
    def role_arn(self) -> str:
        return f"arn:{partition(self.settings.region)}:iam::{self.account}:role/" \
               f"{self.settings.role_name}"

    @property
    def function_arn(self) -> str:
        return self._arn("lambda", f"function:{self.settings.function_name}")

    @property
    def log_group(self) -> str:
        return f"/aws/lambda/{self.settings.function_name}"

    @property
    def repository(self) -> str:
        """The ECR repository ``fsdgraph deploy --image`` pushes the function's image to."""
        return self.settings.function_name

    @property
    def repository_arn(self) -> str:
        return self._arn("ecr", f"repository/{self.repository}")

    @property
    def registry(self) -> str:
        """The account's ECR registry host in the region."""
        suffix = ".cn" if partition(self.settings.region) == "aws-cn" else ""
        return f"{self.account}.dkr.ecr.{self.settings.region}.amazonaws.com{suffix}"

    @property
    def policy_name(self) -> str:
        return f"{self.settings.deployment}-worker"

    @property
    def failures_queue(self) -> str:
        return failures_queue_name(self.settings.deployment)

    @property
    def failures_queue_arn(self) -> str:
        return self._arn("sqs", self.failures_queue)

    def resources(self) -> list[Resource]:
        """What :func:`deploy` creates, in creation order (the failures queue before the
        function that sends to it)."""
        s = self.settings
        return [Resource("bucket", self.bucket, self.bucket_arn),
                Resource("queue", self.failures_queue, self.failures_queue_arn),
                Resource("role", s.role_name, self.role_arn),
                Resource("function", s.function_name, self.function_arn)]

    def run_resource_arns(self, service: str) -> str:
        """The ARN pattern of every queue or topic (``service`` sqs or sns) a run creates."""
        return self._arn(service, f"{self.settings.deployment}-*")

    def worker_policy(self) -> dict[str, Any]:
        """The function role's policy: a worker's actions on the deployment's resources only."""
        prefix = self.settings.prefix
        logs = self._arn("logs", f"log-group:{self.log_group}:*")
        return {"Version": "2012-10-17", "Statement": [
            {"Sid": "StagingAndExchangeObjects", "Effect": "Allow",
             "Action": ["s3:GetObject", "s3:PutObject"],
             "Resource": [f"{self.bucket_arn}/{prefix}runs/*"]},
            # Without ListBucket, S3 answers 403 instead of 404 for a key not yet written,
            # which the object channel must tell apart from a real refusal.
            {"Sid": "MissingKeysAreNotFound", "Effect": "Allow", "Action": ["s3:ListBucket"],
             "Resource": [self.bucket_arn]},
            {"Sid": "ExchangeQueues", "Effect": "Allow",
             "Action": ["sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:GetQueueUrl",
                        "sqs:ReceiveMessage", "sqs:SendMessage"],
             "Resource": [self.run_resource_arns("sqs")]},
            {"Sid": "ExchangeTopics", "Effect": "Allow",
             "Action": ["sns:GetTopicAttributes", "sns:Publish"],
             "Resource": [self.run_resource_arns("sns")]},
            {"Sid": "InvocationTree", "Effect": "Allow", "Action": ["lambda:InvokeFunction"],
             "Resource": [self.function_arn]},
            # Lambda sends the record of a failed invocation with the function's role.
            {"Sid": "FailureRecords", "Effect": "Allow", "Action": ["sqs:SendMessage"],
             "Resource": [self.failures_queue_arn]},
            {"Sid": "Logs", "Effect": "Allow",
             "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
             "Resource": [logs]},
        ]}

    def operator_policy(self, *, image: bool = False) -> dict[str, Any]:
        """What the person or CI job that deploys, runs and tears down needs (``image``: also
        to push the function's image to its ECR repository and deploy it).

        Not in it: ``sqs:ListQueues``, ``sns:ListTopics``, ``logs:DescribeLogGroups`` and
        ``lambda:GetAccountSettings``, which AWS cannot limit to resources; without the first
        three :func:`teardown` skips the search for what killed runs left behind (and says so),
        without the last a run's pre-flight check takes the account's concurrency from the
        configured quotas instead of asking Lambda. The failures queue is one of the
        ``<deployment>-*`` queues of ``RunQueues``. With ``image``, ``ecr:GetAuthorizationToken``
        (docker's login) is not in it either: it too takes ``*``."""
        policy: dict[str, Any] = {"Version": "2012-10-17", "Statement": [
            {"Sid": "Bucket", "Effect": "Allow",
             "Action": ["s3:CreateBucket", "s3:DeleteBucket", "s3:GetBucketTagging",
                        "s3:ListBucket", "s3:PutBucketTagging", "s3:PutBucketPublicAccessBlock",
                        "s3:PutLifecycleConfiguration"],
             "Resource": [self.bucket_arn]},
            {"Sid": "Objects", "Effect": "Allow",
             "Action": ["s3:DeleteObject", "s3:GetObject", "s3:PutObject"],
             "Resource": [f"{self.bucket_arn}/{self.settings.prefix}*"]},
            {"Sid": "Role", "Effect": "Allow",
             "Action": ["iam:CreateRole", "iam:DeleteRole", "iam:DeleteRolePolicy",
                        "iam:GetRole", "iam:ListRolePolicies", "iam:PassRole",
                        "iam:PutRolePolicy", "iam:TagRole", "iam:UpdateAssumeRolePolicy"],
             "Resource": [self.role_arn]},
            {"Sid": "Function", "Effect": "Allow",
             "Action": ["lambda:CreateFunction", "lambda:DeleteFunction", "lambda:GetFunction",
                        "lambda:GetFunctionConcurrency", "lambda:GetFunctionConfiguration",
                        "lambda:InvokeFunction", "lambda:PutFunctionEventInvokeConfig",
                        "lambda:TagResource", "lambda:UpdateFunctionCode",
                        "lambda:UpdateFunctionConfiguration"],
             "Resource": [self.function_arn]},
            {"Sid": "RunQueues", "Effect": "Allow",
             "Action": ["sqs:CreateQueue", "sqs:DeleteMessage", "sqs:DeleteQueue",
                        "sqs:GetQueueAttributes", "sqs:GetQueueUrl",
                        "sqs:ReceiveMessage", "sqs:SendMessage", "sqs:SetQueueAttributes",
                        "sqs:TagQueue"],
             "Resource": [self.run_resource_arns("sqs")]},
            {"Sid": "RunTopics", "Effect": "Allow",
             "Action": ["sns:CreateTopic", "sns:DeleteTopic", "sns:GetTopicAttributes",
                        "sns:ListSubscriptionsByTopic", "sns:Subscribe", "sns:TagResource",
                        "sns:Unsubscribe"],
             "Resource": [self.run_resource_arns("sns")]},
            {"Sid": "Logs", "Effect": "Allow", "Action": ["logs:DeleteLogGroup"],
             "Resource": [self._arn("logs", f"log-group:{self.log_group}:*")]},
        ]}
        if image:
            # Push (docker), and let Lambda pull: for an image of the same account, Lambda adds
            # its own pull permission to the repository's policy with the deployer's rights.
            policy["Statement"].append(
                {"Sid": "ImageRepository", "Effect": "Allow",
                 "Action": ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage",
                            "ecr:CompleteLayerUpload", "ecr:CreateRepository",
                            "ecr:DeleteRepository", "ecr:DescribeRepositories",
                            "ecr:GetDownloadUrlForLayer", "ecr:GetRepositoryPolicy",
                            "ecr:InitiateLayerUpload", "ecr:ListTagsForResource", "ecr:PutImage",
                            "ecr:SetRepositoryPolicy", "ecr:TagResource", "ecr:UploadLayerPart"],
                 "Resource": [self.repository_arn]})
        return policy


def failures_queue_name(deployment: str) -> str:
    """The deployment's failures queue (no run id is ``failures``: run ids are hexadecimal)."""
    return f"{deployment}-failures"


def check_image_uri(uri: str, d: Deployment) -> None:
    """Refuse, before anything is created, an image Lambda could not run for ``d``'s function."""
    match = IMAGE_URI.match(uri)
    if match is None:
        raise ConfigError(f"image URI {uri!r}: expected an image in Amazon ECR, "
                          "ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPOSITORY:TAG (or "
                          "@sha256:DIGEST); Lambda runs container images from ECR only")
    if match["region"] != d.settings.region:
        raise ConfigError(f"image URI {uri!r} is in {match['region']}, but the function is in "
                          f"{d.settings.region}: Lambda runs images from ECR in the function's "
                          "own region (push the image there)")


def trust_policy() -> dict[str, Any]:
    """Who may assume the function's role: Lambda, nobody else."""
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
        "Action": "sts:AssumeRole"}]}


# ------------------------------------------------------------------------------------------------
class _Clients:
    """boto3 clients for the settings' region, profile and endpoints."""

    def __init__(self, settings: AwsSettings) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise ConfigError("the AWS backend needs boto3: pip install 'fsdgraph[aws]'") from exc
        self._session = boto3.Session(profile_name=settings.profile,
                                      region_name=settings.region)
        self._config = Config(retries={"mode": "standard", "max_attempts": 5})
        self._settings = settings
        self._clients: dict[str, Any] = {}

    def __getitem__(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = self._session.client(
                service, endpoint_url=self._settings.endpoints.get(service), config=self._config)
        return self._clients[service]


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


@contextmanager
def _aws_errors(what: str) -> Iterator[None]:
    """botocore errors as TransportError naming ``what`` (credentials are never in them)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        message = exc.response.get("Error", {}).get("Message", "")
        raise TransportError(f"{what}: {_code(exc)}: {message}") from exc
    except BotoCoreError as exc:
        raise TransportError(f"{what}: {exc}") from exc


def _ignoring(clients: _Clients, *codes: str) -> Callable[..., Any]:
    """Call ``client.method(**kw)``; an error whose code is in ``codes`` returns None."""
    from botocore.exceptions import ClientError

    def call(service: str, method: str, **kwargs: Any) -> Any:
        try:
            return getattr(clients[service], method)(**kwargs)
        except ClientError as exc:
            if _code(exc) in codes:
                return None
            raise
    return call


def resolve(settings: AwsSettings, clients: _Clients | None = None) -> Deployment:
    """The deployment of ``settings`` (asks STS for the account id if it is not configured)."""
    account = settings.account
    if not account:
        with _aws_errors("caller identity (are AWS credentials configured?)"):
            sts = (clients or _Clients(settings))["sts"]
            account = str(sts.get_caller_identity()["Account"])
    return Deployment(settings.with_account(account), account)


# ------------------------------------------------------------------------------------------------
def deploy(settings: AwsSettings, *, package: Path | None = None,
           dependencies: bool = True, image_uri: str | None = None, dry_run: bool = False,
           say: Callable[[str], None] = print) -> Deployment:
    """Create or update the deployment of ``settings``; see the module docstring.

    The function's code is the container image ``image_uri`` (in ECR, in the function's region;
    :mod:`fsdgraph.backends.aws.image` builds one), or else a zip: ``package``, built by
    :func:`fsdgraph.backends.aws.package.build_package`, or without it one built here (with the
    third-party dependencies unless ``dependencies`` is False, for a runtime that already has
    them). Raises :class:`~fsdgraph.errors.ConfigError` for an image Lambda could not run
    (before anything is created) or a function whose package type would change."""
    clients = _Clients(settings)
    d = resolve(settings, clients)
    s = d.settings
    if image_uri is not None:
        check_image_uri(image_uri, d)
    if dry_run:
        for r in d.resources():
            say(f"would create {r.kind} {r.name} ({r.arn})"
                + (f" from image {image_uri}" if r.kind == "function" and image_uri else ""))
        say(f"would put role policy {d.policy_name}: {json.dumps(d.worker_policy())}")
        return d
    # Before anything is made: a function of the other package type cannot be updated.
    _existing_function(clients, d, "Image" if image_uri else "Zip")
    call = _ignoring(clients, "BucketAlreadyOwnedByYou", "EntityAlreadyExists",
                     "ResourceConflictException")
    tags = {DEPLOYMENT_TAG: s.deployment}

    with _aws_errors(f"bucket {d.bucket}"):
        location = ({} if s.region == "us-east-1"
                    else {"CreateBucketConfiguration": {"LocationConstraint": s.region}})
        # Asked first: in us-east-1, CreateBucket of a bucket one already owns succeeds.
        exists = _ignoring(clients, "404", "NoSuchBucket", "NotFound")(
            "s3", "head_bucket", Bucket=d.bucket) is not None
        created = not exists and call("s3", "create_bucket", Bucket=d.bucket,
                                      **location) is not None
        # A bucket the user brought keeps its own settings and tags (and survives teardown).
        if created or _owns_bucket(clients, d):
            clients["s3"].put_public_access_block(
                Bucket=d.bucket, PublicAccessBlockConfiguration={
                    "BlockPublicAcls": True, "IgnorePublicAcls": True,
                    "BlockPublicPolicy": True, "RestrictPublicBuckets": True})
            clients["s3"].put_bucket_tagging(Bucket=d.bucket, Tagging={
                "TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]})
            clients["s3"].put_bucket_lifecycle_configuration(
                Bucket=d.bucket, LifecycleConfiguration={"Rules": [{
                    "ID": "expire-abandoned-runs", "Status": "Enabled",
                    "Filter": {"Prefix": f"{s.prefix}runs/"}, "Expiration": {"Days": 1}}]})
    say(f"bucket {d.bucket}")

    with _aws_errors(f"queue {d.failures_queue}"):
        # Created bare, then given its attributes: CreateQueue of an existing queue with other
        # attribute values is refused, and deploy updates what an older deploy made.
        url = clients["sqs"].create_queue(QueueName=d.failures_queue, tags=tags)["QueueUrl"]
        clients["sqs"].set_queue_attributes(QueueUrl=url, Attributes={
            "MessageRetentionPeriod": str(FAILURES_RETENTION_S),
            "VisibilityTimeout": str(FAILURES_VISIBILITY_S),
            "MaximumMessageSize": str(FAILURES_MESSAGE_BYTES)})
    say(f"queue {d.failures_queue} (records of failed invocations)")

    with _aws_errors(f"role {s.role_name}"):
        created = call("iam", "create_role", RoleName=s.role_name,
                       AssumeRolePolicyDocument=json.dumps(trust_policy()),
                       Description=f"fsdgraph worker of deployment {s.deployment}",
                       Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
        if created is None:
            clients["iam"].update_assume_role_policy(
                RoleName=s.role_name, PolicyDocument=json.dumps(trust_policy()))
        clients["iam"].put_role_policy(RoleName=s.role_name, PolicyName=d.policy_name,
                                       PolicyDocument=json.dumps(d.worker_policy()))
    say(f"role {s.role_name} with policy {d.policy_name}")

    code: dict[str, str] = {"ImageUri": image_uri} if image_uri else _upload_zip(
        clients, d, package, dependencies, say)
    _create_or_update_function(clients, d, code, tags)
    say(f"function {s.function_name} ({s.memory_mb} MB, {s.timeout_s} s, {s.architecture}, "
        + (f"image {image_uri}: the compiled kernel)" if image_uri else
           "zip: the scipy kernel; `fsdgraph deploy --image` ships the compiled one)"))
    return d


def _upload_zip(clients: _Clients, d: Deployment, package: Path | None, dependencies: bool,
                say: Callable[[str], None]) -> dict[str, str]:
    """Build the zip unless ``package`` is given, upload it; return the function's ``Code``."""
    s = d.settings
    with tempfile.TemporaryDirectory() as tmp:
        if package is None:
            from fsdgraph.backends.aws.package import DEFAULT_DEPENDENCIES, build_package

            info = build_package(Path(tmp) / "function.zip",
                                 dependencies=DEFAULT_DEPENDENCIES if dependencies else None,
                                 python_version=s.runtime.removeprefix("python"),
                                 architecture=s.architecture)
            package = info.path
            say(f"package {info.zipped_bytes / 1e6:.1f} MB zipped, "
                f"{info.unzipped_bytes / 1e6:.1f} MB unzipped")
        body = package.read_bytes()
    key = f"{s.prefix}package/{hashlib.sha256(body).hexdigest()[:16]}.zip"
    with _aws_errors(f"upload of the function package to s3://{d.bucket}/{key}"):
        clients["s3"].put_object(Bucket=d.bucket, Key=key, Body=body)
    return {"S3Bucket": d.bucket, "S3Key": key}


def _owns_bucket(clients: _Clients, d: Deployment) -> bool:
    """Whether the bucket carries this deployment's tag (so deploy made it)."""
    from botocore.exceptions import ClientError

    try:
        tags = clients["s3"].get_bucket_tagging(Bucket=d.bucket)["TagSet"]
    except ClientError as exc:
        if _code(exc) in ("NoSuchTagSet", "NoSuchBucket"):
            return False
        raise
    return {"Key": DEPLOYMENT_TAG, "Value": d.settings.deployment} in tags


def _create_or_update_function(clients: _Clients, d: Deployment, code: dict[str, str],
                               tags: dict[str, str]) -> None:
    """Create the function from ``code`` (``ImageUri``, or ``S3Bucket`` and ``S3Key``), or update
    the one there, which must have the same package type."""
    from botocore.exceptions import ClientError

    s = d.settings
    lam = clients["lambda"]
    package_type = "Image" if "ImageUri" in code else "Zip"
    config: dict[str, Any] = {
        "Role": d.role_arn, "MemorySize": s.memory_mb, "Timeout": s.timeout_s,
        "Description": f"fsdgraph worker of deployment {s.deployment}"}
    existing = _existing_function(clients, d, package_type)
    if package_type == "Image":
        # The image's command is the handler already; named here too, an image built elsewhere
        # runs the worker as well. The kernel is pinned in the function as in the image: an image
        # without numba fails instead of running the scipy kernel.
        variables = dict(((existing or {}).get("Environment") or {}).get("Variables") or {})
        config.update(ImageConfig={"Command": [HANDLER]},
                      Environment={"Variables": {**variables, KERNEL_ENV: "numba"}})
    else:
        config.update(Handler=HANDLER, Runtime=s.runtime)
    deadline = time.monotonic() + ROLE_PROPAGATION_S
    with _aws_errors(f"function {s.function_name}"):
        while True:
            try:
                lam.create_function(FunctionName=s.function_name, PackageType=package_type,
                                    Code=code, Architectures=[s.architecture], Tags=tags,
                                    **config)
                break
            except ClientError as exc:
                if _code(exc) == "ResourceConflictException":  # exists: update it
                    lam.update_function_code(FunctionName=s.function_name,
                                             Architectures=[s.architecture], **code)
                    _wait_active(lam, s.function_name)
                    lam.update_function_configuration(FunctionName=s.function_name, **config)
                    break
                # A new role takes a few seconds before Lambda may assume it.
                if "cannot be assumed" in str(exc) and time.monotonic() < deadline:
                    time.sleep(2)
                    continue
                raise
        _wait_active(lam, s.function_name)
        _put_event_invoke_config(lam, d, deadline)


def _existing_function(clients: _Clients, d: Deployment,
                       package_type: str) -> dict[str, Any] | None:
    """The function's configuration (None if there is none); ConfigError if it has another
    package type than ``package_type`` (``Zip`` or ``Image``)."""
    name = d.settings.function_name
    with _aws_errors(f"function {name}"):
        existing: dict[str, Any] | None = _ignoring(clients, "ResourceNotFoundException")(
            "lambda", "get_function_configuration", FunctionName=name)
    have = (existing or {}).get("PackageType", "Zip")
    if existing is not None and have != package_type:
        kinds = {"Zip": "a zip", "Image": "a container image"}
        raise ConfigError(
            f"function {name} runs {kinds.get(have, have)}, and Lambda cannot change it to "
            f"{kinds[package_type]}: delete it first (aws lambda delete-function "
            f"--function-name {name}), then deploy again")
    return existing


def _put_event_invoke_config(lam: Any, d: Deployment, deadline: float) -> None:
    """No retries (a failed worker reports its error; a retry would only run it a second time),
    and a record of every failed invocation to the failures queue (what a worker that could not
    report, because it timed out, ran out of memory or never started, leaves)."""
    from botocore.exceptions import ClientError

    while True:
        try:
            lam.put_function_event_invoke_config(
                FunctionName=d.settings.function_name, MaximumRetryAttempts=0,
                MaximumEventAgeInSeconds=d.settings.timeout_s + 60,
                DestinationConfig={"OnFailure": {"Destination": d.failures_queue_arn}})
            return
        except ClientError as exc:
            # Lambda checks that the role may send to the destination; a policy just put may
            # take a few seconds to count.
            if (_code(exc) == "InvalidParameterValueException"
                    and "permission" in str(exc).lower() and time.monotonic() < deadline):
                time.sleep(2)
                continue
            raise


def _wait_active(lam: Any, name: str, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        c = lam.get_function(FunctionName=name)["Configuration"]
        if (c.get("State", "Active") == "Active"
                and c.get("LastUpdateStatus", "Successful") != "InProgress"):
            return
        if c.get("State") == "Failed" or time.monotonic() > deadline:
            raise TransportError(f"function {name} did not become active: state "
                                 f"{c.get('State')}: {c.get('StateReason', '')}")
        time.sleep(1)


# ------------------------------------------------------------------------------------------------

class _Remover:
    """Removes one resource at a time (or, ``dry_run``, only says so) and lists what it did."""

    def __init__(self, say: Callable[[str], None], dry_run: bool) -> None:
        self.say = say
        self.dry_run = dry_run
        self.removed: list[Resource] = []

    def __call__(self, resource: Resource, action: Callable[[], object]) -> None:
        self.say(f"{'would remove' if self.dry_run else 'removing'} {resource.kind} "
                 f"{resource.name}")
        if not self.dry_run:
            with _aws_errors(f"removal of {resource.kind} {resource.name}"):
                action()
        self.removed.append(resource)

def teardown(settings: AwsSettings, *, dry_run: bool = False,
             say: Callable[[str], None] = print) -> list[Resource]:
    """Remove the deployment and whatever its runs left behind; return what was (or, dry, would
    be) removed. Idempotent: what is already gone is skipped."""
    clients = _Clients(settings)
    d = resolve(settings, clients)
    s = d.settings
    gone = ("ResourceNotFoundException", "NoSuchEntity", "NoSuchBucket", "NotFound", "404",
            "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "ResourceNotFound",
            "RepositoryNotFoundException")
    call = _ignoring(clients, *gone)
    remove = _Remover(say, dry_run)

    with _aws_errors("listing the deployment's resources"):
        queues, topics = _run_leftovers(clients, d, say)
        function = call("lambda", "get_function", FunctionName=s.function_name)
        failures = call("sqs", "get_queue_url", QueueName=d.failures_queue)
        role = call("iam", "get_role", RoleName=s.role_name)
        bucket = call("s3", "head_bucket", Bucket=d.bucket)
        logs = _ignoring(clients, *gone, *DENIED)(
            "logs", "describe_log_groups", logGroupNamePrefix=d.log_group)
    for url in queues:
        name = url.rsplit("/", 1)[-1]
        remove(Resource("queue", name, d._arn("sqs", name)),
               functools.partial(call, "sqs", "delete_queue", QueueUrl=url))
    for arn in topics:
        remove(Resource("topic", arn.rsplit(":", 1)[-1], arn),
               functools.partial(_delete_topic, clients, call, arn))
    repository = _own_repository(clients, d, function, say)
    if function is not None:
        remove(Resource("function", s.function_name, d.function_arn),
               lambda: call("lambda", "delete_function", FunctionName=s.function_name))
    if repository:  # after the function, which runs an image from it
        remove(Resource("image repository", d.repository, d.repository_arn),
               lambda: call("ecr", "delete_repository", repositoryName=d.repository,
                            force=True))
    if failures is not None:  # after the function, which sends to it
        remove(Resource("queue", d.failures_queue, d.failures_queue_arn),
               lambda: call("sqs", "delete_queue", QueueUrl=failures["QueueUrl"]))
    if logs and any(g["logGroupName"] == d.log_group for g in logs.get("logGroups", ())):
        remove(Resource("log group", d.log_group, d._arn("logs", f"log-group:{d.log_group}")),
               lambda: call("logs", "delete_log_group", logGroupName=d.log_group))
    if role is not None:
        def delete_role() -> None:
            for name in clients["iam"].list_role_policies(RoleName=s.role_name)["PolicyNames"]:
                call("iam", "delete_role_policy", RoleName=s.role_name, PolicyName=name)
            call("iam", "delete_role", RoleName=s.role_name)
        remove(Resource("role", s.role_name, d.role_arn), delete_role)
    if bucket is not None:
        if _owns_bucket(clients, d):
            remove(Resource("bucket", d.bucket, d.bucket_arn), lambda: _empty_bucket(clients, d))
        else:  # the user's own bucket: only what the deployment wrote goes
            remove(Resource("objects", f"s3://{d.bucket}/{s.prefix}",
                            f"{d.bucket_arn}/{s.prefix}*"),
                   lambda: _empty_bucket(clients, d, s.prefix, keep_bucket=True))
    return remove.removed


def _own_repository(clients: _Clients, d: Deployment, function: dict[str, Any] | None,
                    say: Callable[[str], None]) -> bool:
    """Whether the function runs an image from the deployment's repository, and ``deploy
    --image`` made that repository (it carries the deployment's tag). ECR is asked only then: a
    zip deployment never needs it (nor an ECR endpoint)."""
    from botocore.exceptions import ClientError

    uri = str(((function or {}).get("Code") or {}).get("ImageUri", ""))
    match = IMAGE_URI.match(uri)
    if match is None or (match["account"], match["region"], match["repository"]) != (
            d.account, d.settings.region, d.repository):
        return False
    with _aws_errors(f"image repository {d.repository}"):
        try:
            found = _ignoring(clients, "RepositoryNotFoundException")(
                "ecr", "list_tags_for_resource", resourceArn=d.repository_arn)
        except ClientError as exc:
            if _code(exc) not in DENIED:
                raise
            say(f"not removing image repository {d.repository}: {_code(exc)} (grant "
                f"ecr:ListTagsForResource and ecr:DeleteRepository on it)")
            return False
    return found is not None and {"Key": DEPLOYMENT_TAG, "Value": d.settings.deployment} in \
        found.get("tags", [])


# ------------------------------------------------------------------------------------------------
#: Error codes of a resource that is gone already (removing it again is not an error).
_GONE = ("ResourceNotFoundException", "NoSuchEntity", "NoSuchBucket", "NotFound", "404",
         "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "ResourceNotFound")
#: A run's queue or topic: ``<deployment>-<run id>-ctl``, ``-w<worker>``, ``-t<shard>``
#: (:class:`fsdgraph.resources.RunNames`); group 1 is the run id.
_RUN_RESOURCE = r"^{}-([A-Za-z0-9_]+)-(?:ctl|w\d+|t\d+)$"


@dataclass
class _Run:
    """What one run left: its queue URLs, topic ARNs and object keys, and when it started (the
    earliest date among them; None if none is dated)."""

    queues: list[str] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    started: float | None = None

    def saw(self, when: float) -> None:
        self.started = when if self.started is None else min(self.started, when)


def remove_run_leftovers(settings: AwsSettings, *, older_than_s: float = 3600.0,
                         dry_run: bool = False, say: Callable[[str], None] = print,
                         now: float | None = None) -> list[Resource]:
    """Remove what runs of the deployment left (a coordinator killed before its clean-up): the
    queues and topics named ``<deployment>-<run id>-...`` and the objects under
    ``<prefix>runs/<run id>/`` of every run that started more than ``older_than_s`` ago; return
    what was (``dry_run``: would be) removed, one resource per queue and topic, one ``objects``
    resource per run. The deployment itself stays (``teardown`` removes it).

    A run's age is that of its oldest object (its inputs, staged before anything else) or queue
    (``CreatedTimestamp``). Queues and topics are listed before objects: a run creates its
    objects first and deletes them last, so a run still going whose queues or topics are seen
    has its objects seen too, and is dated. A run of which only topics are left (no date) is
    over: it is removed whatever its age."""
    clients = _Clients(settings)
    d = resolve(settings, clients)
    s = d.settings
    call = _ignoring(clients, *_GONE)
    now = time.time() if now is None else now
    pattern = re.compile(_RUN_RESOURCE.format(re.escape(s.deployment)))
    runs: dict[str, _Run] = {}
    with _aws_errors("listing the runs' resources"):
        queues, topics = _run_leftovers(clients, d, say)
        for url in queues:
            match = pattern.match(url.rsplit("/", 1)[-1])
            if match is None:
                continue
            run = runs.setdefault(match.group(1), _Run())
            run.queues.append(url)
            found = call("sqs", "get_queue_attributes", QueueUrl=url,
                         AttributeNames=["CreatedTimestamp"])
            if found is not None and "CreatedTimestamp" in found.get("Attributes", {}):
                run.saw(float(found["Attributes"]["CreatedTimestamp"]))
        for arn in topics:
            match = pattern.match(arn.rsplit(":", 1)[-1])
            if match is not None:
                runs.setdefault(match.group(1), _Run()).topics.append(arn)
        base = f"{s.prefix}runs/"
        if call("s3", "head_bucket", Bucket=d.bucket) is not None:
            pages = clients["s3"].get_paginator("list_objects_v2").paginate(Bucket=d.bucket,
                                                                            Prefix=base)
            for page in pages:
                for obj in page.get("Contents", []):
                    run_id = obj["Key"][len(base):].split("/", 1)[0]
                    if run_id:
                        run = runs.setdefault(run_id, _Run())
                        run.keys.append(obj["Key"])
                        run.saw(obj["LastModified"].timestamp())
    remove = _Remover(say, dry_run)

    for run_id, run in sorted(runs.items()):
        age = None if run.started is None else now - run.started
        if age is not None and age < older_than_s:
            say(f"keeping run {run_id}: started {age:.0f} s ago (--older-than {older_than_s:g} s)")
            continue
        for arn in run.topics:  # first: they deliver to the queues
            remove(Resource("topic", arn.rsplit(":", 1)[-1], arn),
                   functools.partial(_delete_topic, clients, call, arn))
        for url in run.queues:
            name = url.rsplit("/", 1)[-1]
            remove(Resource("queue", name, d._arn("sqs", name)),
                   functools.partial(call, "sqs", "delete_queue", QueueUrl=url))
        if run.keys:
            remove(Resource("objects", f"s3://{d.bucket}/{base}{run_id}/",
                            f"{d.bucket_arn}/{base}{run_id}/*"),
                   functools.partial(_delete_keys, clients, d.bucket, run.keys))
    return remove.removed


def _delete_keys(clients: _Clients, bucket: str, keys: list[str]) -> None:
    for i in range(0, len(keys), 1000):  # DeleteObjects takes up to 1000 keys
        clients["s3"].delete_objects(Bucket=bucket, Delete={
            "Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})


def _run_leftovers(clients: _Clients, d: Deployment,
                   say: Callable[[str], None]) -> tuple[list[str], list[str]]:
    """Queue URLs and topic ARNs named ``<deployment>-...``: what killed runs left (nothing if
    listing is not allowed)."""
    from botocore.exceptions import ClientError

    try:
        return _list_leftovers(clients, d)
    except ClientError as exc:
        if _code(exc) not in DENIED:
            raise
        say(f"not searching for queues and topics killed runs left: {_code(exc)} "
            f"(grant sqs:ListQueues and sns:ListTopics on * to have them removed)")
        return [], []


def _list_leftovers(clients: _Clients, d: Deployment) -> tuple[list[str], list[str]]:
    ns = f"{d.settings.deployment}-"
    queues: list[str] = []
    for page in clients["sqs"].get_paginator("list_queues").paginate(QueueNamePrefix=ns):
        # The failures queue is the deployment's own, not a run's (removed after the function).
        queues += [url for url in page.get("QueueUrls", [])
                   if url.rsplit("/", 1)[-1] != d.failures_queue]
    topics = [t["TopicArn"] for page in clients["sns"].get_paginator("list_topics").paginate()
              for t in page.get("Topics", []) if t["TopicArn"].rsplit(":", 1)[-1].startswith(ns)]
    return queues, topics


def _delete_topic(clients: _Clients, call: Callable[..., Any], arn: str) -> None:
    subs = clients["sns"].get_paginator("list_subscriptions_by_topic")
    for page in subs.paginate(TopicArn=arn):
        for sub in page.get("Subscriptions", []):
            if sub["SubscriptionArn"].startswith("arn:"):
                call("sns", "unsubscribe", SubscriptionArn=sub["SubscriptionArn"])
    call("sns", "delete_topic", TopicArn=arn)


def _empty_bucket(clients: _Clients, d: Deployment, prefix: str = "",
                  keep_bucket: bool = False) -> None:
    """Delete the objects under ``prefix``, then (unless ``keep_bucket``) the bucket."""
    s3 = clients["s3"]
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=d.bucket, Prefix=prefix):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=d.bucket, Delete={"Objects": keys, "Quiet": True})
    if not keep_bucket:
        s3.delete_bucket(Bucket=d.bucket)
