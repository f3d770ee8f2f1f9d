"""The official Graph Challenge 1024-neuron network, 120 layers, on the 1200 shipped images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import fsdgraph
from fsdgraph.sources.graphchallenge import load_images, load_truth, load_weights

pytestmark = pytest.mark.official


@pytest.mark.parametrize("channel", ["queue", "object"])
def test_official_categories_four_workers(official_data: Path, channel: str) -> None:
    """Exactly the 19 official categories, through each channel, with 4 workers."""
    weights = load_weights(official_data / "neuron1024", 1024, 120)
    images = load_images(official_data / "sparse-images-1024-first1200.tsv.gz", 1024)
    truth = load_truth(official_data / "neuron1024-l120-categories-first1200.tsv")
    assert len(truth) == 19
    plan = fsdgraph.compile(fsdgraph.sequential(weights, -0.3,
                                                cap=32, bias_on_nonzero=True), workers=4)
    with fsdgraph.Scheduler("local", channel) as scheduler:
        result = scheduler.run_sync(plan, images)
    assert np.array_equal(result.categories, truth)
    assert result.report["bytes_sent"] > 0


def test_official_categories_as_an_op_level_model_split_by_features(official_data: Path) -> None:
    """The same network written as an op-level model (sparse matmul, bias on nonzero values,
    capped ReLU per layer) and split by features over 4 workers: the 19 official categories."""
    from fsdgraph.model import from_layers
    from fsdgraph.sources.graphchallenge import graphchallenge_network

    weights = load_weights(official_data / "neuron1024", 1024, 120)
    images = load_images(official_data / "sparse-images-1024-first1200.tsv.gz", 1024)
    truth = load_truth(official_data / "neuron1024-l120-categories-first1200.tsv")
    model = from_layers(graphchallenge_network(weights).layers())
    plan = fsdgraph.compile(model, 4, strategy="model")
    assert [c.kind for c in plan.edges] == ["all_gather"] * 119
    with fsdgraph.Scheduler("local", "object", fsdgraph.RunConfig(progress=False)) as scheduler:
        result = scheduler.run_sync(plan, {"x": images})
    out = result.outputs[model.outputs[0]]
    assert np.array_equal(np.flatnonzero(out.any(axis=1)), truth)
