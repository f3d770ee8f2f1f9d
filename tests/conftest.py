"""Shared fixtures.

Tests on the official Graph Challenge data use the ``official_data`` fixture: on a user's clone
(no ``../shared``) they skip with the reason shown; with ``FSDGRAPH_REQUIRE_OFFICIAL=1`` (set by
``.ci/run``) the same absence is a failure, so CI cannot pass by skipping them.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fsdgraph.backends.local import LocalBackend

OFFICIAL_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "graphchallenge"


@pytest.fixture(scope="session", autouse=True)
def compiled_kernels() -> None:
    """The numba kernels compiled (and cached on disk) once, before any test starts processes.

    On a fresh clone the first import of ``fsdgraph.kernels.fused`` compiles for several seconds;
    every process after it loads the cache. Without this the first test to start workers would
    have its workers compile in their zygote or launcher, silent long enough to be relaunched,
    as a Lambda function whose image was built without the cache would be."""
    if importlib.util.find_spec("numba") is not None:
        importlib.import_module("fsdgraph.kernels.fused")


@pytest.fixture(scope="module")
def backend() -> Iterator[LocalBackend]:
    """The embedded backend, shared by a module's runs (a module or class may define its own
    ``backend``)."""
    b = LocalBackend()
    yield b
    b.close()


def _required(found: bool, reason: str) -> None:
    """Skip with ``reason`` when data outside the repository is missing (a user's clone), fail
    where it must be there (``FSDGRAPH_REQUIRE_OFFICIAL=1``)."""
    if not found:
        if os.environ.get("FSDGRAPH_REQUIRE_OFFICIAL") == "1":
            pytest.fail(reason + " (FSDGRAPH_REQUIRE_OFFICIAL=1)")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def official_data() -> Path:
    """The folder with the official 1024-neuron network, the first 1200 images and their truth."""
    _required((OFFICIAL_DIR / "neuron1024").is_dir(),
              f"official Graph Challenge data not found at {OFFICIAL_DIR}")
    return OFFICIAL_DIR


@pytest.fixture(scope="session")
def paper_data() -> Path:
    """The folder with the paper's measured runs, queue_runs.csv and object_runs.csv."""
    from fsdgraph.cost import paper_data_dir

    folder = paper_data_dir()
    _required(all((folder / f"{c}_runs.csv").is_file() for c in ("queue", "object")),
              f"the paper's measured runs not found at {folder}")
    return folder


# -- AWS: a moto server, and a Lambda invoke server in front of it --------------------------------
# aiobotocore cannot use moto's in-process mock, so ``moto_server`` runs moto as a separate process
# on a free port of 127.0.0.1 for the session. It sets dummy credentials in the environment
# (inherited by the child processes the tests spawn), creates the bucket, and stops the server at
# the end. Tests that do not ask for it (every local-only run) never start it.
#
# moto stores Lambda functions but runs them only in Docker, so ``lambda_server`` runs
# fsdgraph.testing.lambda_endpoint (proxying everything but Invoke to ``moto_server``) as a
# separate process for the session; each invocation's output goes to a file in ``log_dir``. It is
# stopped with SIGTERM at the end, so it kills the invocations still running.

REGION = "us-east-1"
BUCKET = "fsdgraph-test"


@dataclass(frozen=True)
class MotoServer:
    url: str
    region: str
    bucket: str


@dataclass(frozen=True)
class LambdaServer:
    url: str
    log_dir: Path
    #: The server's own output.
    log: Path


def _start(start: Callable[[], tuple[subprocess.Popen[bytes], str]]
           ) -> tuple[subprocess.Popen[bytes], str]:
    from fsdgraph.errors import ConfigError

    try:
        return start()
    except ConfigError as exc:  # says which server and shows its log
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    pytest.importorskip("aiobotocore", reason="pip install -e '.[test]'")
    pytest.importorskip("moto.server", reason="pip install -e '.[test]'")
    from fsdgraph.testing.aws_servers import CREDENTIALS, start_moto, stop

    log = tmp_path_factory.mktemp("moto") / "moto_server.log"
    proc, url = _start(lambda: start_moto(log))
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name, value in {**CREDENTIALS, "AWS_DEFAULT_REGION": REGION}.items():
                mp.setenv(name, value)
            mp.delenv("AWS_PROFILE", raising=False)
            request = urllib.request.Request(f"{url}/{BUCKET}", method="PUT")
            with urllib.request.urlopen(request, timeout=10):
                pass
            yield MotoServer(url, REGION, BUCKET)
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def lambda_server(moto_server: MotoServer,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[LambdaServer]:
    from fsdgraph.testing.aws_servers import start_invoke_server, stop

    root = tmp_path_factory.mktemp("lambda")
    log, log_dir = root / "invoke_server.log", root / "invocations"
    proc, url = _start(lambda: start_invoke_server(moto_server.url, log, log_dir))
    try:
        yield LambdaServer(url, log_dir, log)
    finally:
        stop(proc)
