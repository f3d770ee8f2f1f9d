"""Shared fixtures.

Tests on the official Graph Challenge data use the ``official_data`` fixture: on a user's clone
(no ``../shared``) they skip with the reason shown; with ``FSDGRAPH_REQUIRE_OFFICIAL=1`` (set by
``.ci/run``) the same absence is a failure, so CI cannot pass by skipping them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

OFFICIAL_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "graphchallenge"


@pytest.fixture(scope="session")
def official_data() -> Path:
    """The folder with the official 1024-neuron network, the first 1200 images and their truth."""
    if not (OFFICIAL_DIR / "neuron1024").is_dir():
        reason = f"official Graph Challenge data not found at {OFFICIAL_DIR}"
        if os.environ.get("FSDGRAPH_REQUIRE_OFFICIAL") == "1":
            pytest.fail(reason + " (FSDGRAPH_REQUIRE_OFFICIAL=1)")
        pytest.skip(reason)
    return OFFICIAL_DIR


# -- AWS transports: a moto server ----------------------------------------------------------------
# aiobotocore cannot use moto's in-process mock, so ``moto_server`` runs moto as a separate process
# on a free port of 127.0.0.1 for the session. It sets dummy credentials in the environment
# (inherited by the child processes the tests spawn), creates the bucket, and kills the server at
# the end. Tests that do not ask for it (every local-only run) never start it.

REGION = "us-east-1"
BUCKET = "fsdgraph-test"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    # Never read a developer's real configuration.
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


@dataclass(frozen=True)
class MotoServer:
    url: str
    region: str
    bucket: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    pytest.importorskip("aiobotocore", reason="pip install 'aiobotocore>=2.5'")
    pytest.importorskip("moto.server", reason="pip install 'moto[server]>=5'")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    # The log goes to a file: a pipe nobody reads would fill up and stall the server.
    log = tmp_path_factory.mktemp("moto") / "moto_server.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log_file, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/moto-api/", timeout=1):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not start on {url}:\n{log.read_text()}")
                time.sleep(0.1)
        with pytest.MonkeyPatch.context() as mp:
            for name, value in CREDENTIALS.items():
                mp.setenv(name, value)
            mp.delenv("AWS_PROFILE", raising=False)
            request = urllib.request.Request(f"{url}/{BUCKET}", method="PUT")
            with urllib.request.urlopen(request, timeout=10):
                pass
            yield MotoServer(url, REGION, BUCKET)
    finally:
        proc.kill()
        proc.wait(timeout=10)
