"""Shared fixtures.

Tests on the official Graph Challenge data use the ``official_data`` fixture: on a user's clone
(no ``../shared``) they skip with the reason shown; with ``FSDGRAPH_REQUIRE_OFFICIAL=1`` (set by
``.ci/run``) the same absence is a failure, so CI cannot pass by skipping them.
"""

from __future__ import annotations

import os
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
