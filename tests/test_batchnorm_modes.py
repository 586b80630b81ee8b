"""The `bn` setting: how BatchNorm normalises queries, the same for every algorithm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_maml import classification_batch

from metarun import batchnorm
from metarun.algorithms.maml import MAML
from metarun.algorithms.protonet import ProtoNet
from metarun.backbones.conv4 import Conv4
from metarun.batchnorm import TaskBatchNorm2d
from metarun.engine import Engine
from metarun.errors import ConfigError


def maml():
    torch.manual_seed(0)
    return MAML(Conv4((1, 12, 12), hidden=4, blocks=1), 3, inner_lr=0.4, inner_steps=1).double()


def task():
    batch = classification_batch(tasks=1)
    return batch.support_x[0], batch.support_y[0], batch.query_x[0]


def one_block(algo, x, statistics_of):
    """conv -> BatchNorm with the statistics of `statistics_of`'s activations -> pool -> ReLU ->
    head."""
    conv, norm = algo.model[0].features[0], algo.model[0].features[1]
    reference = conv(statistics_of)
    var, mean = torch.var_mean(reference, dim=(0, 2, 3), unbiased=False, keepdim=True)
    normalised = (conv(x) - mean) / torch.sqrt(var + norm.eps) * norm.weight.view(
        1, -1, 1, 1
    ) + norm.bias.view(1, -1, 1, 1)
    return algo.model[1](F.relu(F.max_pool2d(normalised, 2)).flatten(1))


def test_transductive_normalises_the_queries_with_their_own_statistics():
    algo, (sx, sy, qx) = maml(), task()
    predict = algo.adapt(algo.params(), sx, sy, ways=3, steps=0)
    torch.testing.assert_close(predict(qx), one_block(algo, qx, statistics_of=qx))


def test_support_mode_normalises_every_query_with_the_support_statistics():
    algo, (sx, sy, qx) = maml(), task()
    algo.bn = "support"
    predict = algo.adapt(algo.params(), sx, sy, ways=3, steps=0)
    torch.testing.assert_close(predict(qx), one_block(algo, qx, statistics_of=sx))
    torch.testing.assert_close(predict(qx[:1]), predict(qx)[:1])  # a query's prediction is its own


def test_support_plus_one_normalises_each_query_with_the_support_and_itself():
    algo, (sx, sy, qx) = maml(), task()
    algo.bn = "support_plus_one"
    predict = algo.adapt(algo.params(), sx, sy, ways=3, steps=0)
    expected = torch.cat(
        [
            one_block(algo, qx[i : i + 1], statistics_of=torch.cat([sx, qx[i : i + 1]]))
            for i in range(len(qx))
        ]
    )
    torch.testing.assert_close(predict(qx), expected)


@pytest.mark.parametrize("bn", ["support", "support_plus_one"])
def test_every_algorithm_shares_the_setting(bn):
    torch.manual_seed(0)
    algo = ProtoNet(Conv4((1, 12, 12), hidden=4, blocks=1), 3).double()
    sx, sy, qx = task()
    transductive = algo.adapt(algo.params(), sx, sy, ways=3)(qx)
    algo.bn = bn
    inductive = algo.adapt(algo.params(), sx, sy, ways=3)(qx)
    assert not torch.allclose(transductive, inductive)
    torch.testing.assert_close(algo.adapt(algo.params(), sx, sy, ways=3)(qx[:2]), inductive[:2])


def recorded_batches(norm, batches, step=0):
    outputs = []
    with batchnorm.recording(norm), batchnorm.at_step(step):
        for batch in batches:
            outputs.append(norm(batch))
    return outputs


def test_running_statistics_follow_torch_batchnorm():
    torch.manual_seed(0)
    ours, torchs = TaskBatchNorm2d(3), torch.nn.BatchNorm2d(3)
    ours.use_running_statistics(True)
    batches = [torch.randn(4, 3, 5, 5) * 2 + 1 for _ in range(3)]
    for mine, expected in zip(recorded_batches(ours, batches), map(torchs, batches)):
        torch.testing.assert_close(mine, expected)
    torch.testing.assert_close(ours.running_mean[0], torchs.running_mean)
    torch.testing.assert_close(ours.running_var[0], torchs.running_var)
    ours.eval(), torchs.eval()
    torch.testing.assert_close(ours(batches[0]), torchs(batches[0]))


def test_fused_and_vmap_safe_formulations_record_the_same_statistics():
    torch.manual_seed(0)
    fused, safe = TaskBatchNorm2d(3), TaskBatchNorm2d(3)
    fused.use_running_statistics(True), safe.use_running_statistics(True)
    batches = [torch.randn(4, 3, 5, 5) * 3 - 2 for _ in range(3)]
    recorded_batches(fused, batches)
    with batchnorm.vmap_safe():
        recorded_batches(safe, batches)
    torch.testing.assert_close(fused.running_mean, safe.running_mean)
    torch.testing.assert_close(fused.running_var, safe.running_var)


def test_running_statistics_change_only_inside_the_recording_block():
    norm = TaskBatchNorm2d(3)
    norm.use_running_statistics(True)
    norm(torch.randn(4, 3, 5, 5))
    assert torch.equal(norm.running_mean, torch.zeros(1, 3))


def test_per_step_running_statistics_are_kept_and_used_per_step():
    torch.manual_seed(0)
    norm = TaskBatchNorm2d(3)
    norm.per_step(3, weights=False, statistics=True)
    norm.use_running_statistics(True)
    first, last = torch.randn(4, 3, 5, 5) + 5, torch.randn(4, 3, 5, 5) - 5
    recorded_batches(norm, [first], step=0)
    recorded_batches(norm, [last], step=2)
    torch.testing.assert_close(norm.running_mean[0], 0.1 * first.mean((0, 2, 3)))
    torch.testing.assert_close(norm.running_mean[2], 0.1 * last.mean((0, 2, 3)))
    assert torch.equal(norm.running_mean[1], torch.zeros(3))
    norm.eval()
    with batchnorm.at_step(1):
        torch.testing.assert_close(norm(first), first / (1 + norm.eps) ** 0.5)


def test_running_mode_learns_statistics_in_meta_training_and_tests_each_query_alone():
    algo = maml()
    batchnorm.use_mode(algo, "running")
    batch = classification_batch(tasks=2)
    Engine("loop").meta_backward(algo, batch)
    assert not torch.equal(algo.model[0].features[1].running_mean, torch.zeros(1, 4))
    assert algo.training
    sx, sy, qx = task()
    algo.eval()
    predict = algo.adapt(algo.params(), sx, sy, ways=3, steps=1)
    torch.testing.assert_close(predict(qx[:1]), predict(qx)[:1])


def test_engine_scores_in_eval_mode_and_restores_training_mode():
    algo = maml()
    batchnorm.use_mode(algo, "running")
    batch = classification_batch(tasks=2)
    Engine("loop").meta_backward(algo, batch)
    in_eval = Engine("loop").scores(algo, batch)
    assert algo.training
    algo.eval()
    torch.testing.assert_close(in_eval, Engine("loop").scores(algo, batch))
    torch.testing.assert_close(in_eval, Engine("vmap").scores(algo, batch))


def test_two_models_in_one_process_keep_their_own_running_statistics():
    first, second = maml(), maml()
    batchnorm.use_mode(first, "running")
    batchnorm.use_mode(second, "running")
    batch = classification_batch(tasks=2)
    with batchnorm.recording(first):
        for algo in (first, second):
            algo.task_loss(algo.params(), *(t[0] for t in batch.tensors), ways=3)
    untouched = second.model[0].features[1]
    assert torch.equal(untouched.running_mean, torch.zeros(1, 4))
    with batchnorm.recording(second):
        pass
    assert torch.equal(
        untouched.running_mean, torch.zeros(1, 4)
    )  # nothing was noted for later either
    assert not torch.equal(first.model[0].features[1].running_mean, torch.zeros(1, 4))


def test_flags_set_for_one_model_are_gone_after_its_block():
    norm, x = TaskBatchNorm2d(3), torch.randn(4, 3, 5, 5)
    norm.per_step(2)
    with torch.no_grad():
        norm.weight[1].mul_(3.0)
    with batchnorm.at_step(1), batchnorm.statistics_from(2):
        inside = norm(x)
    torch.testing.assert_close(norm(x), TaskBatchNorm2d(3)(x))
    assert not torch.allclose(inside, norm(x))


class TorchBatchNormNet(torch.nn.Module):
    """A backbone built with torch's own BatchNorm, as an outside ResNet would be."""

    out_features = 4 * 10 * 10

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten()
        )

    def forward(self, x):
        return self.layers(x)


@pytest.mark.parametrize("bn", list(batchnorm.MODES))
def test_torch_batchnorm_in_a_backbone_is_refused_naming_the_mode(bn):
    algo = MAML(TorchBatchNormNet(), 3, inner_lr=0.4, inner_steps=1)
    with pytest.raises(ConfigError, match=f"bn={bn}.*BatchNorm2d.*TaskBatchNorm2d") as error:
        batchnorm.use_mode(algo, bn)
    assert "backbone TorchBatchNormNet" in str(error.value)
