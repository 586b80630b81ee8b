"""dataset=gp_1d: curves from a squared-exponential Gaussian process, the CNP notebook's way."""

from __future__ import annotations

import pytest
import torch

from metarun.data.gaussian_process import GaussianProcess1D, squared_exponential
from metarun.errors import ConfigError


def test_curves_on_the_test_grid_have_the_kernels_covariance():
    sampler = GaussianProcess1D().sampler("test", 1, 2, 8, "cpu")  # 8 evenly spaced targets
    batch = sampler.sample(20000, torch.Generator().manual_seed(0))
    y = batch.query_y[..., 0].double()  # [curves, 8]
    empirical = y.T @ y / len(y)
    expected = squared_exponential(batch.query_x[0, :, 0].double(), 0.4, 1.0, 0.02)
    torch.testing.assert_close(empirical, expected, atol=0.04, rtol=0)


def test_the_test_grid_spans_x_range_evenly_as_in_the_notebook():
    batch = GaussianProcess1D().sampler("test", 1, 5, 400, "cpu").sample(2, torch.Generator())
    torch.testing.assert_close(batch.query_x[0, :, 0], torch.arange(-2.0, 2.0, 0.01))


def test_contexts_are_points_of_their_curve_and_training_targets_include_them():
    dataset = GaussianProcess1D()
    train = dataset.sampler("train", 1, 4, 3, "cpu").sample(5, torch.Generator().manual_seed(0))
    assert train.support_x.shape == (5, 4, 1) and train.query_x.shape == (5, 7, 1)
    torch.testing.assert_close(train.query_y[:, :4], train.support_y)
    test = dataset.sampler("test", 1, 4, 50, "cpu").sample(5, torch.Generator().manual_seed(0))
    for x, y, grid_x, grid_y in zip(*test.tensors):
        at = ((x - grid_x.T).abs() < 1e-6).float().argmax(1)  # each context's grid point
        torch.testing.assert_close(y, grid_y[at])


def test_the_same_seed_gives_the_same_curves():
    sampler = GaussianProcess1D().sampler("val", 1, 5, 40, "cpu")
    first, second = (sampler.sample(3, torch.Generator().manual_seed(7)) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first.tensors, second.tensors))


def test_more_test_contexts_than_targets_are_refused_naming_both():
    with pytest.raises(ConfigError, match="shots=9 contexts among their queries=5"):
        GaussianProcess1D().sampler("test", 1, 9, 5, "cpu")
