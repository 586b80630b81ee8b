"""Nearest neighbour: 1-NN and nearest class mean, by Euclidean distance or cosine similarity."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY

from metarun import run
from metarun.algorithms.nearest_neighbour import NearestNeighbour
from metarun.algorithms.protonet import ProtoNet
from metarun.backbones.mlp import MLP


def task():
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(6, 4, generator=g, dtype=torch.float64),
        torch.tensor([0, 1, 2, 0, 1, 2]),
        torch.randn(7, 4, generator=g, dtype=torch.float64),
    )


def nearest(**options) -> NearestNeighbour:
    torch.manual_seed(0)
    return NearestNeighbour(MLP((4,), hidden=[8]), 3, **options).double()


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_one_nn_predicts_the_class_of_the_nearest_support_example(metric):
    algo, (sx, sy, qx) = nearest(metric=metric), task()
    predicted = algo.adapt(algo.params(), sx, sy, ways=3)(qx).argmax(1)
    support, queries = algo.model(sx), algo.model(qx)
    if metric == "cosine":
        closest = F.cosine_similarity(queries.unsqueeze(1), support.unsqueeze(0), dim=-1).argmax(1)
    else:
        closest = torch.cdist(queries, support).argmin(1)
    assert torch.equal(predicted, sy[closest])


def test_class_mean_with_euclidean_distance_is_prototypical_networks():
    algo, (sx, sy, qx) = nearest(rule="class_mean"), task()
    protonet = ProtoNet(MLP((4,), hidden=[8]), 3).double()
    protonet.load_state_dict(algo.state_dict())
    torch.testing.assert_close(
        algo.adapt(algo.params(), sx, sy, ways=3)(qx),
        protonet.adapt(protonet.params(), sx, sy, ways=3)(qx),
    )


def test_nearest_class_mean_on_a_protonet_run_reproduces_its_test_accuracy(make_cfg, tmp_path):
    protonet = run.train(make_cfg(*TINY, "algo=protonet"), tmp_path / "protonet")
    nearest = run.train(
        make_cfg(
            *TINY,
            "algo=nearest_neighbour",
            "algo.rule=class_mean",
            "trainer.iterations=0",
            f"init_from={tmp_path / 'protonet'}",
        ),
        tmp_path / "nearest",
    )
    assert nearest["accuracy"] == protonet["accuracy"]
    assert nearest["iteration"] == 0
