"""Matching Networks: attention over the support set, 1-NN at zero temperature, FCE as a switch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from reference import assert_engines_agree

from metarun.algorithms.functional import lstm_cell
from metarun.algorithms.matching_net import MatchingNet
from metarun.backbones.mlp import MLP
from metarun.episode import Episode


def task(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    support_y = torch.tensor([0, 1, 2, 0, 1, 2])
    return (
        torch.randn(6, 4, generator=g, dtype=torch.float64),
        support_y,
        torch.randn(5, 4, generator=g, dtype=torch.float64),
    )


def matching_net(**options) -> MatchingNet:
    torch.manual_seed(0)
    return MatchingNet(MLP((4,), hidden=[8]), 3, **options).double()


def test_prediction_is_the_attention_weighted_sum_of_support_labels():
    algo, (sx, sy, qx) = matching_net(), task()
    log_probabilities = algo.adapt(algo.params(), sx, sy, ways=3)(qx)
    support, queries = algo.model(sx), algo.model(qx)
    attention = torch.softmax(
        F.cosine_similarity(queries.unsqueeze(1), support.unsqueeze(0), dim=-1), dim=1
    )
    torch.testing.assert_close(attention.sum(1), torch.ones(5, dtype=torch.float64))
    expected = torch.stack([attention[:, sy == c].sum(1) for c in range(3)], dim=1)
    torch.testing.assert_close(log_probabilities.exp(), expected)


def test_near_zero_temperature_is_one_nearest_neighbour_by_cosine():
    algo, (sx, sy, qx) = matching_net(temperature=1e-6), task()
    probabilities = algo.adapt(algo.params(), sx, sy, ways=3)(qx).exp()
    nearest = F.cosine_similarity(
        algo.model(qx).unsqueeze(1), algo.model(sx).unsqueeze(0), dim=-1
    ).argmax(1)
    torch.testing.assert_close(probabilities, F.one_hot(sy[nearest], 3).double())


def test_full_context_embeddings_with_silent_lstms_are_the_plain_network():
    algo, (sx, sy, qx) = matching_net(fce=True), task()
    plain = matching_net()
    with torch.no_grad():
        for name, p in algo.named_parameters():
            if "lstm" in name or "support_" in name:
                p.zero_()
    torch.testing.assert_close(
        algo.adapt(algo.params(), sx, sy, ways=3)(qx),
        plain.adapt(plain.params(), sx, sy, ways=3)(qx),
    )
    with torch.no_grad():
        algo.query_lstm.bias_ih.fill_(0.5)
    assert not torch.allclose(
        algo.adapt(algo.params(), sx, sy, ways=3)(qx),
        plain.adapt(plain.params(), sx, sy, ways=3)(qx),
    )


@pytest.mark.parametrize("fce", [False, True])
def test_loop_and_vmap_engines_agree(fce):
    algo = matching_net(fce=fce)
    labels = torch.arange(3).repeat_interleave(2).repeat(4, 1)
    batch = Episode(
        torch.randn(4, 6, 4, dtype=torch.float64),
        labels,
        torch.randn(4, 6, 4, dtype=torch.float64),
        labels,
        3,
    )
    assert_engines_agree(algo, batch)


def test_lstm_cell_from_parameters_equals_torch_lstm_cell():
    torch.manual_seed(0)
    cell = torch.nn.LSTMCell(3, 5).double()
    x, state = (
        torch.randn(2, 3, dtype=torch.float64),
        (torch.randn(2, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)),
    )
    for ours, theirs in zip(lstm_cell(dict(cell.named_parameters()), x, state), cell(x, state)):
        torch.testing.assert_close(ours, theirs)
