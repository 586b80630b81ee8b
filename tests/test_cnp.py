"""Conditional Neural Processes: a Gaussian per target from the mean of encoded contexts."""

from __future__ import annotations

import math

import pytest
import torch
from synthetic import TinyImages, meta_train, train_runs

from metarun import pictures, plot
from metarun.algorithms.cnp import CNP
from metarun.algorithms.functional import gaussian_log_prob
from metarun.backbones.conv4 import Conv4
from metarun.backbones.mlp import MLP
from metarun.backbones.pixels import Pixels
from metarun.data.gaussian_process import GaussianProcess1D
from metarun.engine import Engine
from metarun.report import find_runs, markdown


def cnp() -> CNP:
    torch.manual_seed(0)
    return CNP(Pixels((1,)), 1, encoder=[16, 16], decoder=[16]).double()


def test_the_prediction_does_not_depend_on_the_order_of_the_contexts():
    model, x, y = cnp(), torch.randn(6, 1).double(), torch.randn(6, 1).double()
    targets = torch.linspace(-2, 2, 9).double().unsqueeze(-1)
    order = torch.randperm(6)
    in_order = model.adapt(model.params(), x, y, ways=1)(targets)
    shuffled = model.adapt(model.params(), x[order], y[order], ways=1)(targets)
    torch.testing.assert_close(in_order, shuffled)
    assert (in_order[:, 1] >= 0.1).all()  # the notebook's lower bound on the deviation


def test_the_loss_is_the_targets_gaussian_negative_log_likelihood():
    mean, std, y = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0])
    by_hand = (0.5 * math.log(2 * math.pi) + 0.5) + (math.log(2.0) + 0.5 * math.log(2 * math.pi))
    per_target = [t.unsqueeze(-1) for t in (mean, std.log(), y)]  # [targets, 1]
    assert -gaussian_log_prob(*per_target).mean().item() == torch.tensor(by_hand / 2).item()
    model = cnp().float()
    batch = GaussianProcess1D().sampler("train", 1, 5, 4, "cpu").sample(1, torch.Generator())
    loss, mse = model.task_loss(model.params(), *(t[0] for t in batch.tensors), ways=1)
    prediction = model.adapt(model.params(), batch.support_x[0], batch.support_y[0], ways=1)
    mean, std = prediction(batch.query_x[0]).unbind(-1)
    normal = torch.distributions.Normal(mean, std)
    torch.testing.assert_close(loss, -normal.log_prob(batch.query_y[0, :, 0]).mean())
    torch.testing.assert_close(mse, (mean - batch.query_y[0, :, 0]).pow(2).mean())


def test_loop_and_vmap_engines_agree():
    model, sampler = cnp().float(), GaussianProcess1D().sampler("test", 1, 5, 40, "cpu")
    batch = sampler.sample(3, torch.Generator().manual_seed(0))
    loop = Engine("loop").query_outputs(model, batch, None, model.gaussian)
    torch.testing.assert_close(
        Engine("vmap").query_outputs(model, batch, None, model.gaussian), loop
    )


GP_RUN = [
    "algo=cnp",
    "dataset=gp_1d",
    "backbone=pixels",
    "task.ways=1",
    "task.shots=5",
    "task.queries=5",
    "task.meta_batch_size=16",
    "optimizer.lr=1e-3",
    "eval.queries=50",
    "eval.episodes=50",
    "trainer.val_every=150",
    "trainer.val_episodes=20",
    "trainer.ckpt_every=150",
    "trainer.log_every=150",
    "device=cpu",
    "algo.encoder=[32,32]",
    "algo.decoder=[32]",
]


@pytest.mark.slow
def test_a_short_run_on_gp_curves_lowers_the_test_nll(tmp_path):
    before, after = train_runs(tmp_path, GP_RUN, 0, 300)
    assert after["calibration"]["nll"]["mean"] < before["calibration"]["nll"]["mean"] - 0.3
    assert 0.8 < after["calibration"]["coverage95"]["mean"] <= 1.0


def test_plot_draws_test_curves_with_the_predicted_band(tmp_path):
    train_runs(tmp_path, GP_RUN, 0)
    runs = find_runs([tmp_path / "0"])
    (picture,) = pictures.regression_curves(runs, tmp_path / "plots")
    assert picture.name == "curves_0.png" and picture.stat().st_size > 0
    assert plot.reliability_diagrams(runs, tmp_path / "plots") == []  # a classifier's picture


def test_classification_gives_a_logit_per_class_whatever_the_order_of_the_contexts():
    torch.manual_seed(0)
    model = CNP(MLP((4,), [8]), 3, encoder=[16], decoder=[16]).double()
    x, y = torch.randn(6, 4).double(), torch.tensor([0, 1, 2, 0, 1, 2])
    queries = torch.randn(5, 4).double()
    logits = model.adapt(model.params(), x, y, ways=3)(queries)
    assert logits.shape == (5, 3)
    order = torch.randperm(6)
    torch.testing.assert_close(
        model.adapt(model.params(), x[order], y[order], ways=3)(queries), logits
    )


@pytest.mark.slow
def test_it_learns_a_tiny_image_problem():
    torch.manual_seed(0)
    sampler = TinyImages(classes=20, per_class=10).sampler("train", 3, 1, 2, torch.device("cpu"))
    model = CNP(Conv4((1, 16, 16), hidden=16), 3, encoder=[32, 32], decoder=[32])
    engine = meta_train(model, sampler, updates=150, tasks=4)
    test = sampler.sample(32, torch.Generator().manual_seed(1))
    assert engine.scores(model, test).mean() > 0.7  # chance: 1/3


def test_report_shows_a_regressors_nll_and_coverage(tmp_path):
    train_runs(tmp_path, GP_RUN, 0)
    header = markdown(find_runs([tmp_path / "0"])).splitlines()[2]
    assert "coverage95" in header and "NLL" in header and "ECE" not in header
