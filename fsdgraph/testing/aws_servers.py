"""The AWS backend on this machine: a moto server for S3, SNS, SQS, STS, IAM, Logs and Lambda's
control plane, and an :class:`~fsdgraph.testing.lambda_endpoint.InvokeServer` in front of it
that runs Lambda invocations as subprocesses. Both are separate processes on 127.0.0.1 (a server
in a thread would share the client's GIL and slow every request down).

Both enforce the service quotas (:class:`~fsdgraph.quotas.Quotas`), so a test fails where AWS
would: moto runs as :mod:`fsdgraph.testing.moto_quotas` (topics, subscriptions and filter policies
per topic and per account), the invoke server bounds concurrent executions. Each server reads
them with :func:`~fsdgraph.quotas.load_quotas` from its environment (``FSDGRAPH_QUOTA_<NAME>``
variables, then the config file's ``[quotas]``); ``LocalAws(quotas=...)`` passes its own through
those variables.

From a shell::

    python -m fsdgraph.testing.aws_servers --config local-aws.toml
    # writes the config file, prints the variables to export, runs until Ctrl-C

From Python (benchmarks, tests)::

    with LocalAws() as aws:
        settings = aws.settings(deployment="demo")  # endpoints filled in

    with LocalAws(quotas=Quotas(lambda_concurrency=8), duplicate_events=True) as aws:
        ...  # at most 8 functions at once; every Event invocation delivered twice

moto needs credentials to be present, not valid: :data:`CREDENTIALS` are dummy ones (the servers
get them; export them in the shell that runs fsdgraph).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from fsdgraph.backends.aws.config import SERVICES, AwsSettings
from fsdgraph.channels import ChannelConfig
from fsdgraph.errors import ConfigError
from fsdgraph.quotas import Quotas
from fsdgraph.scheduler import RunConfig

#: A run against these servers that waits for slow workers rather than relaunching them: every
#: function is a process on this machine's few cores, so tens of them starting through the
#: invocation tree can each be silent for longer than the 10 s after which a worker is relaunched
#: (or its peers wait more than 60 s). Starved of CPU is slow, not lost.
PATIENT = RunConfig(progress=False, relaunch_after_s=600, stall_timeout_s=600,
                    channel=ChannelConfig(peer_timeout_s=600))

#: Dummy credentials for local servers; the shared AWS files are hidden so a developer's real
#: configuration is never read.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def quota_environ(quotas: Quotas) -> dict[str, str]:
    """The ``FSDGRAPH_QUOTA_<NAME>`` variables that make a server's
    :func:`~fsdgraph.quotas.load_quotas` return ``quotas``.

    >>> env = quota_environ(Quotas(filter_policies_per_topic=4))
    >>> env["FSDGRAPH_QUOTA_FILTER_POLICIES_PER_TOPIC"], env["FSDGRAPH_QUOTA_LAMBDA_CONCURRENCY"]
    ('4', '1000')
    """
    return {f"FSDGRAPH_QUOTA_{f.name.upper()}": repr(getattr(quotas, f.name))
            for f in fields(quotas)}


def _fail(what: str, log: Path) -> ConfigError:
    return ConfigError(f"{what} did not start; its log ({log}):\n{log.read_text()[-3000:]}")


def start_moto(log: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """A quota-enforcing moto server (:mod:`fsdgraph.testing.moto_quotas`, its quotas from
    ``env``) on a free port, its output in ``log``; returns the process and its URL once it
    answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:  # a file, not a pipe nobody reads (it would fill and stall)
        proc = subprocess.Popen([sys.executable, "-m", "fsdgraph.testing.moto_quotas",
                                 "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(url + "/moto-api/", timeout=1):
                return proc, url
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if proc.poll() is not None or time.monotonic() > deadline:
                stop(proc)
                raise _fail("moto server", log) from None
            time.sleep(0.1)


def start_invoke_server(upstream: str, log: Path, log_dir: Path,
                        env: dict[str, str] | None = None, *,
                        options: Sequence[str] = ()) -> tuple[subprocess.Popen[bytes], str]:
    """An invoke server in front of ``upstream``; returns the process and its URL once it
    listens. Invocation logs go to ``log_dir``; ``options`` are more of its command-line options
    (``--duplicate-events``, ``--cold``)."""
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fsdgraph.testing.lambda_endpoint",
                                 "--upstream", upstream, "--log-dir", str(log_dir), *options],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        # Only a complete line: the URL may be read while it is being written.
        for line in log.read_text().splitlines(keepends=True):
            if line.startswith("listening on ") and line.endswith("\n"):
                return proc, line.split()[-1]
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise _fail("invoke server", log)
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate, then kill if it does not go within 10 s."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class LocalAws:
    """Both local servers, started together; see the module docstring.

    ``quotas`` (default: what the servers read from the environment and config file) are passed
    to both. With ``duplicate_events`` every Event invocation runs twice, as Lambda's
    at-least-once delivery may do; ``warm=False`` starts every invocation in a fresh interpreter
    (see :mod:`fsdgraph.testing.lambda_endpoint`).
    """

    def __init__(self, *, region: str = "us-east-1", log_dir: Path | None = None,
                 quotas: Quotas | None = None, duplicate_events: bool = False,
                 warm: bool = True) -> None:
        self.region = region
        self.quotas = quotas
        self.duplicate_events = duplicate_events
        self.warm = warm
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.log_dir = log_dir
        self._procs: list[subprocess.Popen[bytes]] = []
        self.endpoints: dict[str, str] = {}

    def start(self) -> LocalAws:
        if self.log_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fsdgraph-local-aws-")
            self.log_dir = Path(self._tmp.name)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **CREDENTIALS, "AWS_DEFAULT_REGION": self.region}
        if self.quotas is not None:
            env.update(quota_environ(self.quotas))
        options = ["--duplicate-events"] if self.duplicate_events else []
        if not self.warm:
            options.append("--cold")
        try:
            moto, moto_url = start_moto(self.log_dir / "moto.log", env)
            self._procs.append(moto)
            invoke, invoke_url = start_invoke_server(
                moto_url, self.log_dir / "invoke_server.log", self.log_dir / "invocations", env,
                options=options)
            self._procs.append(invoke)
        except BaseException:
            self.close()
            raise
        self.endpoints = {s: moto_url for s in SERVICES} | {"lambda": invoke_url}
        return self

    @property
    def alive(self) -> bool:
        """Whether both servers are still running."""
        return bool(self._procs) and all(p.poll() is None for p in self._procs)

    def settings(self, **kwargs: Any) -> AwsSettings:
        """AwsSettings pointing at these servers (``kwargs`` set the other fields)."""
        return AwsSettings(region=self.region, endpoints=self.endpoints, **kwargs)

    def config_toml(self, deployment: str = "fsdgraph") -> str:
        """A config file for these servers."""
        lines = ["[aws]", f'region = "{self.region}"', f'deployment = "{deployment}"', "",
                 "[aws.endpoints]", *(f'{k} = "{v}"' for k, v in self.endpoints.items())]
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        while self._procs:
            stop(self._procs.pop())
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> LocalAws:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def main(argv: list[str] | None = None, out: IO[str] = sys.stdout) -> int:
    """Start both servers, write or print their config, wait for Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m fsdgraph.testing.aws_servers",
        description="Local AWS-API servers for the aws backend: moto (S3, SNS, SQS, STS, IAM, "
                    "Logs, Lambda's control plane) and a Lambda invoke endpoint. Runs until "
                    "Ctrl-C.")
    parser.add_argument("--config", type=Path,
                        help="write a config file for them here (default: print it)")
    parser.add_argument("--deployment", default="fsdgraph", help="deployment name in the config")
    parser.add_argument("--duplicate-events", action="store_true",
                        help="run every Event invocation twice, as Lambda's at-least-once "
                             "delivery may")
    parser.add_argument("--cold", action="store_true",
                        help="start every invocation in a fresh interpreter instead of forking "
                             "it from a warm one")
    args = parser.parse_args(argv)

    def stop_serving(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Both stop the servers too (a background job would otherwise ignore Ctrl-C, and SIGTERM
    # would leave them running).
    signal.signal(signal.SIGINT, stop_serving)
    signal.signal(signal.SIGTERM, stop_serving)
    # Quotas: each server reads FSDGRAPH_QUOTA_* and the config file's [quotas] itself.
    with LocalAws(log_dir=Path(tempfile.mkdtemp(prefix="fsdgraph-local-aws-")),
                  duplicate_events=args.duplicate_events, warm=not args.cold) as aws:
        if args.config is not None:
            args.config.write_text(aws.config_toml(args.deployment))
            print(f"# config written to {args.config}: pass --config {args.config}", file=out)
        else:
            print("# a config file for these servers (pass it with --config FILE):", file=out)
            print(aws.config_toml(args.deployment), file=out)
        print("# dummy credentials the local servers accept:", file=out)
        for name, value in CREDENTIALS.items():
            print(f"export {name}={value}", file=out)
        print(f"# logs in {aws.log_dir}; Ctrl-C stops both servers", file=out, flush=True)
        try:
            while aws.alive:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
