"""The latent-variable Neural Process: a CNP with a global latent z, trained on an ELBO."""

from __future__ import annotations

import pytest
import torch
from synthetic import SHORT_REGRESSION_RUN, train_runs

from metarun.algorithms.functional import gaussian_kl, gaussian_log_prob
from metarun.algorithms.neural_process import NeuralProcess
from metarun.backbones.pixels import Pixels
from metarun.errors import ConfigError


def neural_process(samples: int = 10) -> NeuralProcess:
    torch.manual_seed(0)
    sizes = {"encoder": [16, 16], "latent_encoder": [16, 16], "latents": 4, "decoder": [16]}
    return NeuralProcess(Pixels((1,)), 1, samples=samples, **sizes).double()


def test_the_prediction_does_not_depend_on_the_order_of_the_contexts():
    model, x, y = neural_process(), torch.randn(6, 1).double(), torch.randn(6, 1).double()
    targets, order = torch.linspace(-2, 2, 9).double().unsqueeze(-1), torch.randperm(6)
    torch.manual_seed(1)
    in_order = model.adapt(model.params(), x, y, ways=1)(targets)
    torch.manual_seed(1)
    shuffled = model.adapt(model.params(), x[order], y[order], ways=1)(targets)
    torch.testing.assert_close(in_order, shuffled)


def test_a_prediction_is_the_mixture_over_draws_of_z_summarised():
    model, x, y = neural_process(samples=3), torch.randn(4, 1).double(), torch.randn(4, 1).double()
    targets, params = torch.randn(5, 1).double(), model.params()
    torch.manual_seed(2)
    mean, std = model.adapt(params, x, y, ways=1)(targets).unbind(-1)
    torch.manual_seed(2)
    q = model.latent(params, x, y)
    z = q[0] + q[1] * torch.randn(3, 4, dtype=torch.float64)
    representation = model.encode(params, "encoder", x, y, 1).mean(0).expand(3, -1)
    draws = model.bounded(model.decode(params, torch.cat([representation, z], -1), x, targets))
    torch.testing.assert_close(mean, draws[..., 0].mean(1))
    second_moment = (draws[..., 1].square() + draws[..., 0].square()).mean(1)
    torch.testing.assert_close(std.square(), second_moment - mean.square())


def test_the_loss_is_the_targets_nll_when_they_add_nothing_to_the_contexts():
    model, x, y = neural_process(), torch.randn(4, 1).double(), torch.randn(4, 1).double()
    params = model.params()
    torch.manual_seed(3)
    loss, _ = model.task_loss(params, x, y, x, y, ways=1)  # posterior = prior: KL is 0
    torch.manual_seed(3)
    q = model.latent(params, x, y)
    z = q[0] + q[1] * torch.randn(4, dtype=torch.float64)
    row = torch.cat([model.encode(params, "encoder", x, y, 1).mean(0), z]).unsqueeze(0)
    mean, std = model.bounded(model.decode(params, row, x, x)[:, 0]).chunk(2, -1)
    torch.testing.assert_close(loss, -gaussian_log_prob(mean, std.log(), y).mean())


def test_the_posterior_pools_a_target_that_repeats_a_context_once():
    """gp_1d's training targets contain its contexts: the posterior is then q(z | targets), as in
    the authors' notebook, not a pool in which the contexts count twice."""
    model, x, y = neural_process(), torch.randn(7, 1).double(), torch.randn(7, 1).double()
    params = model.params()
    torch.manual_seed(4)
    loss, _ = model.task_loss(params, x[:3], y[:3], x, y, ways=1)
    torch.manual_seed(4)
    prior, posterior = model.latent(params, x[:3], y[:3]), model.latent(params, x, y)
    z = posterior[0] + posterior[1] * torch.randn(4, dtype=torch.float64)
    row = torch.cat([model.encode(params, "encoder", x[:3], y[:3], 1).mean(0), z]).unsqueeze(0)
    mean, std = model.bounded(model.decode(params, row, x[:3], x)[:, 0]).chunk(2, -1)
    kl = gaussian_kl(posterior[0], posterior[1].log(), prior[0], prior[1].log())
    expected = -gaussian_log_prob(mean, std.log(), y).mean() + kl / 7
    torch.testing.assert_close(loss, expected)


def test_the_posterior_pools_contexts_and_targets_when_they_are_apart():
    model, x, y = neural_process(), torch.randn(7, 1).double(), torch.randn(7, 1).double()
    params = model.params()
    torch.testing.assert_close(
        model.posterior(params, (x[:3], y[:3]), (x[3:], y[3:])), model.latent(params, x, y)
    )


def test_classification_is_a_clear_error(tiny_cfg, tmp_path):
    from metarun import run

    with pytest.raises(ConfigError, match="algo=neural_process regresses"):
        run.train(tiny_cfg("algo=neural_process"), tmp_path)


@pytest.mark.slow
def test_a_short_run_on_sinusoids_lowers_the_test_nll_and_mse(tmp_path):
    overrides = [
        "algo=neural_process",
        "dataset=sinusoid",
        "backbone=pixels",
        *SHORT_REGRESSION_RUN,
        "optimizer.lr=1e-3",
    ]
    before, after = train_runs(tmp_path, overrides, 0, 300)
    assert after["calibration"]["nll"]["mean"] < before["calibration"]["nll"]["mean"] - 0.3
    assert after["mse"]["mean"] < before["mse"]["mean"]
