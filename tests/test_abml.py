"""Amortised Bayesian meta-learning: a learned Gaussian prior, task posteriors by gradient steps
on the evidence lower bound."""

from __future__ import annotations

import math

import pytest
import torch
from synthetic import SHORT_REGRESSION_RUN, train_runs

from metarun.algorithms.abml import ABML, add_pre_activation_noise, weights_kl
from metarun.backbones.mlp import MLP
from metarun.backbones.pixels import Pixels
from metarun.data.sinusoid import Sinusoid
from metarun.engine import Engine
from metarun.evaluator import episode_scores


def test_the_kl_term_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mean_q, mean_p = ({"w": torch.randn(3, 2, generator=g)} for _ in range(2))
    log_q, log_p = ({"w": torch.randn(3, 2, generator=g) * 0.3} for _ in range(2))
    q = torch.distributions.Normal(mean_q["w"], log_q["w"].exp())
    p = torch.distributions.Normal(mean_p["w"], log_p["w"].exp())
    expected = torch.distributions.kl_divergence(q, p).sum()
    torch.testing.assert_close(weights_kl(mean_q, log_q, mean_p, log_p), expected)


def test_the_negative_elbo_of_a_linear_model_matches_its_closed_form():
    torch.manual_seed(0)
    algo = ABML(Pixels((1,)), 1, samples=20000, kl_weight=0.5).double()  # f(x) = w x + b
    params = algo.params()
    mean = {"1.weight": torch.tensor([[0.7]]).double(), "1.bias": torch.tensor([0.2]).double()}
    log_std = {"1.weight": torch.tensor([[-1.0]]).double(), "1.bias": torch.tensor([-2.0]).double()}
    x, y = torch.tensor([[1.0], [-2.0]]).double(), torch.tensor([[0.5], [1.0]]).double()
    # E[(y - w x - b)^2] = (y - 0.7 x - 0.2)^2 + e^-2 x^2 + e^-4; the noise std is 1 (log 0)
    squared = (y - 0.7 * x - 0.2).square() + math.exp(-2) * x.square() + math.exp(-4)
    nll = (0.5 * squared + 0.5 * math.log(2 * math.pi)).sum()
    kl = weights_kl(mean, log_std, *algo.prior(params))
    elbo = algo.negative_elbo(params, (mean, log_std), x, y)
    torch.testing.assert_close(elbo, nll + 0.5 * kl, rtol=1e-2, atol=0)


def test_predictions_average_the_weight_draws():
    torch.manual_seed(0)
    algo = ABML(MLP((2,), [8]), 3, samples=4).double()
    params = algo.params()
    x = torch.randn(5, 2, dtype=torch.float64)
    torch.manual_seed(1)
    outputs = algo.outputs(*algo.prior(params), x)
    torch.manual_seed(1)
    log_mean = algo.predictive(params, algo.prior(params), x, regression=False)
    torch.testing.assert_close(log_mean.exp(), outputs.softmax(-1).mean(0))


def test_loop_and_vmap_engines_agree_when_draws_are_the_means():
    torch.manual_seed(0)
    algo = ABML(MLP((1,), [8]), 1, samples=2, inner_steps=2, initial_std=1e-9).double()
    batch = Sinusoid().sampler("train", 1, 5, 5, "cpu").sample(3, torch.Generator().manual_seed(0))
    batch = type(batch)(*(t.double() for t in batch.tensors), ways=1)
    loop = Engine("loop").query_outputs(algo, batch, None, algo.gaussian)
    vmapped = Engine("vmap").query_outputs(algo, batch, None, algo.gaussian)
    torch.testing.assert_close(vmapped, loop)


@pytest.mark.parametrize("score_support", [True, False])
def test_the_meta_loss_scores_the_support_set_too_unless_told_not_to(score_support):
    torch.manual_seed(0)
    options = {"local_reparameterisation": False, "score_support": score_support}
    algo = ABML(
        Pixels((1,)), 1, samples=1, inner_steps=1, kl_weight=0.5, initial_std=1e-12, **options
    ).double()
    params, g = algo.params(), torch.Generator().manual_seed(0)
    sx, sy, qx, qy = (torch.randn(n, 1, generator=g, dtype=torch.float64) for n in (3, 3, 4, 4))
    loss, _ = algo.task_loss(params, sx, sy, qx, qy, ways=1)
    q = algo.posterior(params, sx, sy, 1, first_order=False)  # draws are the means here
    nll = lambda x, y: algo.expected_nll(params, algo.outputs(*q, x), y)
    bound = nll(qx, qy) + 0.5 * weights_kl(*q, *algo.prior(params))
    if score_support:
        bound = bound + nll(sx, sy)
    scored = 7 if score_support else 4
    expected = (bound + 0.5 * algo.hyper_prior_nll(params)) / scored
    torch.testing.assert_close(loss, expected)


@pytest.mark.slow
def test_a_short_run_on_sinusoids_lowers_the_test_nll_and_mse(tmp_path):
    overrides = [
        "algo=abml",
        "dataset=sinusoid",
        "backbone=mlp",
        *SHORT_REGRESSION_RUN,
        "algo.samples=2",
        "algo.inner_steps=2",
        "algo.inner_lr=0.01",
    ]
    before, after = train_runs(tmp_path, overrides, 0, 300)
    assert after["calibration"]["nll"]["mean"] < before["calibration"]["nll"]["mean"] - 0.3
    assert after["mse"]["mean"] < before["mse"]["mean"]


def test_local_reparameterisation_gives_each_unit_the_marginal_of_per_example_weight_draws():
    torch.manual_seed(0)
    layer = torch.nn.Conv2d(2, 3, 3, padding=1).double()
    weight_std, bias_std = torch.rand(3, 2, 3, 3).double() * 0.5, torch.rand(3).double() * 0.5
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    draws = 20000
    local = add_pre_activation_noise(
        layer,
        (x.expand(draws, -1, -1, -1),),
        layer(x).expand(draws, -1, -1, -1),
        weight_std,
        bias_std,
    )
    weights = layer.weight + weight_std * torch.randn(draws, *layer.weight.shape).double()
    biases = layer.bias + bias_std * torch.randn(draws, 3).double()
    grouped = torch.nn.functional.conv2d(
        x.repeat(1, draws, 1, 1), weights.flatten(0, 1), biases.flatten(), padding=1, groups=draws
    ).view(draws, 3, 4, 4)  # one weight draw per example
    torch.testing.assert_close(local.mean(0), grouped.mean(0), atol=0.06, rtol=0)  # 4 s.e.
    torch.testing.assert_close(local.var(0), grouped.var(0), atol=0.0, rtol=0.06)


def test_local_reparameterisation_draws_every_example_independently():
    torch.manual_seed(0)
    algo = ABML(Pixels((3,)), 2, samples=1, initial_std=0.5).double()
    x = torch.randn(1, 3, dtype=torch.float64).expand(4, -1)
    outputs = algo.sampled_pass(*algo.prior(algo.params()), x)
    assert (outputs[1:] != outputs[0]).all()
    per_pass = ABML(Pixels((3,)), 2, samples=1, local_reparameterisation=False).double()
    per_pass.load_state_dict(algo.state_dict())
    shared = per_pass.sampled_pass(*per_pass.prior(per_pass.params()), x)
    assert (shared == shared[0]).all()


def test_its_evaluation_draws_the_same_noise_every_time_and_leaves_trainings_untouched():
    torch.manual_seed(0)
    algo, sampler = (
        ABML(MLP((1,), [8]), 1, samples=2, initial_std=0.3),
        Sinusoid().sampler("test", 1, 5, 10, "cpu"),
    )
    state = torch.random.get_rng_state()
    first, second = (episode_scores(algo, Engine("loop"), sampler, 6, 0, 3) for _ in range(2))
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert torch.equal(torch.random.get_rng_state(), state)
