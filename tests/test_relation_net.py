"""Relation Networks: learned scores in [0, 1] for every (class, query) pair, MSE to the one-hot
match."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from reference import assert_engines_agree
from test_maml import classification_batch

from metarun.algorithms.relation_net import RelationNet
from metarun.backbones.conv4 import Conv4


def relation_net() -> RelationNet:
    torch.manual_seed(0)
    return RelationNet(
        Conv4((1, 12, 12), hidden=4, blocks=2, pooled_blocks=1), 3, hidden=4, units=3
    ).double()


def task():
    batch = classification_batch(tasks=1)
    return batch.support_x[0], batch.support_y[0], batch.query_x[0], batch.query_y[0]


def test_scores_compare_each_query_with_each_class_sum_of_support_maps():
    algo, (sx, sy, qx, _) = relation_net(), task()
    scores = algo.adapt(algo.params(), sx, sy, ways=3)(qx)
    support, queries = (
        algo.model(sx).view(-1, *algo.map_shape),
        algo.model(qx).view(-1, *algo.map_shape),
    )
    pairs = torch.stack(
        [torch.cat([support[sy == c].sum(0), queries[q]]) for q in range(len(qx)) for c in range(3)]
    )
    torch.testing.assert_close(scores, algo.relation(pairs).view(len(qx), 3))
    assert scores.min() >= 0 and scores.max() <= 1


def test_loss_is_mean_squared_error_to_the_one_hot_match():
    algo, (sx, sy, qx, qy) = relation_net(), task()
    loss, accuracy = algo.task_loss(algo.params(), sx, sy, qx, qy, ways=3)
    scores = algo.adapt(algo.params(), sx, sy, ways=3)(qx)
    torch.testing.assert_close(loss, F.mse_loss(scores, F.one_hot(qy, 3).double()))
    assert accuracy == (scores.argmax(1) == qy).float().mean()


def test_loop_and_vmap_engines_agree():
    algo, batch = relation_net(), classification_batch()
    assert_engines_agree(algo, batch)
