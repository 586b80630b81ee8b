"""Prototypical Networks' logits are negative squared distances to class-mean embeddings."""

from __future__ import annotations

import torch
from conftest import TINY
from reference import assert_engines_agree

from metarun import retest, run
from metarun.algorithms.protonet import ProtoNet
from metarun.backbones.mlp import MLP
from metarun.episode import Episode


def test_logits_are_negative_squared_distances_to_prototypes():
    torch.manual_seed(0)
    algo = ProtoNet(MLP((4,), hidden=[8]), out_features=3).double()
    support_x = torch.randn(6, 4, dtype=torch.float64)
    support_y = torch.tensor([2, 0, 1, 0, 2, 1])
    query_x = torch.randn(5, 4, dtype=torch.float64)
    logits = algo.adapt(algo.params(), support_x, support_y, ways=3)(query_x)

    embed = algo.model
    expected = torch.empty(5, 3, dtype=torch.float64)
    for c in range(3):
        prototype = embed(support_x[support_y == c]).mean(0)
        for q in range(5):
            expected[q, c] = -((embed(query_x[q : q + 1])[0] - prototype) ** 2).sum()
    torch.testing.assert_close(logits, expected)


def test_mean_distance_divides_the_logits_by_the_embedding_size():
    torch.manual_seed(0)
    algo = ProtoNet(MLP((4,), hidden=[8]), out_features=3).double()
    support_x, support_y = torch.randn(6, 4, dtype=torch.float64), torch.tensor([2, 0, 1, 0, 2, 1])
    query_x = torch.randn(5, 4, dtype=torch.float64)
    plain = algo.adapt(algo.params(), support_x, support_y, ways=3)(query_x)
    algo.mean_distance = True
    averaged = algo.adapt(algo.params(), support_x, support_y, ways=3)(query_x)
    torch.testing.assert_close(averaged, plain / algo.model(query_x).shape[-1])


def test_loop_and_vmap_engines_agree():
    torch.manual_seed(0)
    algo = ProtoNet(MLP((4,), hidden=[8]), out_features=3).double()
    labels = torch.arange(3).repeat_interleave(2).repeat(4, 1)
    batch = Episode(
        torch.randn(4, 6, 4, dtype=torch.float64),
        labels,
        torch.randn(4, 6, 4, dtype=torch.float64),
        labels,
        3,
    )
    assert_engines_agree(algo, batch)


def test_a_run_tests_at_other_ways_than_it_trained(make_cfg, tmp_path):
    run.train(make_cfg(*TINY, "algo=protonet"), tmp_path)
    result = retest.evaluate(
        make_cfg(f"run_dir={tmp_path}", "eval.ways=7", "eval.episodes=3", config="eval")
    )
    assert result["protocol"]["ways"] == 7 and result["episodes"] == 3
