"""The conformance kit (fsdgraph.testing.conformance) against the backends fsdgraph ships: the
in-process backend and the local backend here, the AWS backend against a moto server (its
functions run by the local Lambda endpoint) in tests/test_aws_e2e.py, Ray in tests/test_ray.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fsdgraph.backends.inproc import InProcBackend
from fsdgraph.backends.local import LocalBackend
from fsdgraph.testing.conformance import BackendSuite, ChannelExchangeSuite, ControlPlaneSuite


class TestInProc(BackendSuite, ControlPlaneSuite, ChannelExchangeSuite):
    channels = ("object",)
    refused_channels = ("queue", "auto")

    @pytest.fixture
    def backend(self) -> InProcBackend:
        return InProcBackend()


@pytest.fixture(scope="module")
def local_backend() -> Iterator[LocalBackend]:
    backend = LocalBackend()  # one warm launcher for the whole module
    yield backend
    backend.close()


class TestLocal(BackendSuite, ControlPlaneSuite, ChannelExchangeSuite):
    channels = ("queue", "object", "auto")

    @pytest.fixture
    def backend(self, local_backend: LocalBackend) -> LocalBackend:
        return local_backend
