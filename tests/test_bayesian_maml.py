"""Bayesian MAML: particles moved by SVGD, meta-trained by the chaser loss."""

from __future__ import annotations

import math

import pytest
import torch
from synthetic import SHORT_REGRESSION_RUN, TinyImages, train_runs

from metarun.algorithms.bayesian_maml import BayesianMAML, svgd_direction
from metarun.backbones.conv4 import Conv4
from metarun.backbones.mlp import MLP
from metarun.data.sinusoid import Sinusoid
from metarun.engine import Engine
from metarun.episode import Episode


def test_svgd_direction_matches_the_kernel_formula_in_one_dimension():
    a = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    g = torch.tensor([[0.5], [-1.0], [2.0]], dtype=torch.float64)  # grad log p at each particle
    h = 1.0 / math.log(3)  # median of the squared distances {0,0,0,1,1,4,4,9,9} is 1
    expected = []
    for i in range(3):
        total = 0.0
        for j in range(3):
            k = math.exp(-((a[j, 0] - a[i, 0]).item() ** 2) / h)
            total += k * g[j, 0].item() - 2 * (a[j, 0] - a[i, 0]).item() / h * k
        expected.append([total / 3])
    torch.testing.assert_close(svgd_direction(a, g), torch.tensor(expected, dtype=torch.float64))


def test_svgd_particles_approach_a_gaussian_targets_mean_and_variance():
    generator = torch.Generator().manual_seed(0)
    particles = torch.randn(100, 1, generator=generator, dtype=torch.float64) * 0.1 - 3.0
    mean, std = 2.0, 0.5
    for _ in range(3000):
        particles = particles + 0.05 * svgd_direction(particles, -(particles - mean) / std**2)
    assert abs(particles.mean().item() - mean) < 0.02
    assert abs(particles.std().item() - std) < 0.05


def small_regressor(particles: int = 3) -> BayesianMAML:
    torch.manual_seed(0)
    return BayesianMAML(MLP((1,), [8]), 1, particles=particles, inner_lr=0.01, inner_steps=2)


def reference_chaser_loss(algo: BayesianMAML, params, sx, sy, qx, qy) -> torch.Tensor:
    """The chaser loss written out slowly: each particle's log posterior and its gradient one
    by one, the kernel and its gradient pair by pair."""

    def log_posterior(row, x, y):
        weights = algo.weights_of(row)
        out = torch.func.functional_call(algo.model[0], weights, (x,))
        log_lambda, log_gamma, w = row[-2], row[-1], row[:-2]
        lik = 0.5 * y.numel() * log_gamma - 0.5 * log_gamma.exp() * (out - y).square().sum()
        prior = 0.5 * w.numel() * log_lambda - 0.5 * log_lambda.exp() * w.square().sum()
        hyper = 2.0 * log_lambda - 2.0 * log_lambda.exp() + 2.0 * log_gamma - 0.2 * log_gamma.exp()
        return lik + prior + hyper

    def step(rows, x, y, keep_graph):
        grads = [
            torch.autograd.grad(log_posterior(r, x, y), r, create_graph=keep_graph)[0] for r in rows
        ]
        squared = [[(a - b).square().sum() for b in rows] for a in rows]
        h = (
            torch.stack([d for row in squared for d in row]).median() / math.log(len(rows))
        ).detach()
        moved = []
        for i, a in enumerate(rows):
            phi = sum(
                torch.exp(-squared[j][i] / h) * grads[j]
                - 2 * (rows[j] - a) / h * torch.exp(-squared[j][i] / h)
                for j in range(len(rows))
            )
            moved.append(a + algo.inner_lr * phi / len(rows))
        return moved

    rows = list(algo.initial_particles(params).unbind(0))
    for _ in range(algo.inner_steps):
        rows = step(rows, sx, sy, keep_graph=True)
    leader = [r.detach().requires_grad_() for r in rows]
    leader = [r.detach() for r in step(leader, torch.cat([sx, qx]), torch.cat([sy, qy]), False)]
    return sum((r[:-2] - lead[:-2]).square().sum() for r, lead in zip(rows, leader))


def test_the_chaser_loss_and_its_meta_gradient_match_a_slow_reference():
    algo = small_regressor().double()
    batch = Sinusoid().sampler("train", 1, 5, 5, "cpu").sample(1, torch.Generator().manual_seed(0))
    sx, sy, qx, qy = (t[0].double() for t in batch.tensors)
    params = algo.params()
    loss, _ = algo.task_loss(params, sx, sy, qx, qy, ways=1)
    expected = reference_chaser_loss(algo, params, sx, sy, qx, qy)
    torch.testing.assert_close(loss, expected)
    fast = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    slow = torch.autograd.grad(expected, list(params.values()), allow_unused=True)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b)


def test_the_ensemble_averages_probabilities_and_moment_matches_gaussians():
    algo = small_regressor(particles=2).double()
    particles = algo.initial_particles(algo.params()).detach()
    x = torch.linspace(-1, 1, 4, dtype=torch.float64).unsqueeze(-1)
    outputs = algo.outputs(particles, x)  # [2, 4, 1]
    gaussian = algo.predictive(particles, x, regression=True)
    variance = (1 / particles[:, -1].exp()).mean() + outputs.var(0, unbiased=False)[:, 0]
    torch.testing.assert_close(gaussian[:, 0], outputs.mean(0)[:, 0])
    torch.testing.assert_close(gaussian[:, 1], variance.sqrt())
    torch.manual_seed(0)
    classifier = BayesianMAML(MLP((2,), [8]), 3, particles=2).double()
    rows = classifier.initial_particles(classifier.params()).detach()
    z = torch.randn(5, 2, dtype=torch.float64)
    mean_probabilities = classifier.outputs(rows, z).softmax(-1).mean(0)
    torch.testing.assert_close(
        classifier.predictive(rows, z, False).softmax(-1), mean_probabilities
    )


def test_loop_and_vmap_engines_agree():
    algo = small_regressor().double()  # float64: the engines' sums may be ordered differently
    batch = Sinusoid().sampler("train", 1, 5, 5, "cpu").sample(3, torch.Generator().manual_seed(0))
    batch = Episode(*(t.double() for t in batch.tensors), batch.ways)
    loop = Engine("loop").query_outputs(algo, batch, None, algo.gaussian)
    torch.testing.assert_close(Engine("vmap").query_outputs(algo, batch, None, algo.gaussian), loop)


def test_its_svgd_steps_fit_a_tiny_image_problem():
    torch.manual_seed(0)
    sampler = TinyImages(classes=20, per_class=10).sampler("train", 3, 1, 2, torch.device("cpu"))
    algo = BayesianMAML(
        Conv4((1, 16, 16), hidden=8),
        3,
        particles=2,
        inner_lr=0.1,
        inner_steps=2,
        precision_lr_scale=1e-3,
    )
    test = sampler.sample(16, torch.Generator().manual_seed(1))
    assert Engine("loop").scores(algo, test, steps=0).mean() < 0.5  # chance: 1/3
    assert Engine("loop").scores(algo, test).mean() > 0.9


@pytest.mark.slow
def test_a_short_run_on_sinusoids_lowers_the_test_nll_and_mse(tmp_path):
    overrides = [
        "algo=bayesian_maml",
        "dataset=sinusoid",
        "backbone=mlp",
        *SHORT_REGRESSION_RUN,
        "algo.particles=4",
        "algo.inner_steps=5",
    ]
    before, after = train_runs(tmp_path, overrides, 0, 300)
    assert after["calibration"]["nll"]["mean"] < before["calibration"]["nll"]["mean"]
    assert after["mse"]["mean"] < 0.75 * before["mse"]["mean"]
