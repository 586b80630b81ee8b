"""Calibration as a test result: every classifier's predictive distribution gives NLL, Brier
score, expected and maximum calibration error and a reliability diagram."""

from __future__ import annotations

import json
import math

import pytest
import torch
from synthetic import SHORT_REGRESSION_RUN, TinyImages, train_runs

from metarun import run
from metarun.build import build_algorithm
from metarun.engine import Engine
from metarun.errors import ConfigError
from metarun.metrics import (
    calibration_errors,
    calibration_summary,
    gaussian_scores,
    predictive_scores,
    regression_summary,
)
from metarun.report import find_runs, markdown

CLASSIFIERS = [
    "maml",
    "fomaml",
    "anil",
    "meta_sgd",
    "reptile",
    "imaml",
    "maml_plus_plus",
    "lstm_meta_learner",
    "protonet",
    "matching_net",
    "relation_net",
    "baseline",
    "nearest_neighbour",
    "snail",
    "mann",
    "meta_net",
    "bayesian_maml",
    "cnp",
]


def hand_case():
    """Four queries of a 2-way episode: confidences 0.95, 0.6, 0.7, 0.85; the second is wrong."""
    probabilities = torch.tensor([[0.95, 0.05], [0.6, 0.4], [0.3, 0.7], [0.85, 0.15]])
    return probabilities.double().unsqueeze(0), torch.tensor([[0, 1, 1, 0]])


def test_accuracy_nll_and_brier_of_one_episode_match_a_hand_computation():
    scores = predictive_scores(*hand_case(), bins=4)
    assert scores["accuracy"].item() == 0.75
    nll = -(math.log(0.95) + math.log(0.4) + math.log(0.7) + math.log(0.85)) / 4
    assert scores["nll"].item() == pytest.approx(nll)
    brier = (2 * 0.05**2 + 2 * 0.6**2 + 2 * 0.3**2 + 2 * 0.15**2) / 4
    assert scores["brier"].item() == pytest.approx(brier)


def test_calibration_errors_of_one_episode_match_a_hand_computation():
    reliability = predictive_scores(*hand_case(), bins=4)["reliability"][0]
    # bins (0.5, 0.75]: confidences 0.6, 0.7, one right; (0.75, 1]: 0.95, 0.85, both right
    expected = torch.tensor([[0, 0, 0], [0, 0, 0], [2, 1.3, 1], [2, 1.8, 2]]).double()
    torch.testing.assert_close(reliability, expected)
    ece, mce = calibration_errors(reliability)
    assert ece.item() == pytest.approx((2 * 0.15 + 2 * 0.1) / 4)
    assert mce.item() == pytest.approx(0.15)


def synthetic_predictor(overconfidence: float, queries: int = 20000):
    """2-way predictions whose stated confidence exceeds their real accuracy by `overconfidence`."""
    generator = torch.Generator().manual_seed(0)
    confidence = 0.5 + 0.5 * torch.rand(queries, generator=generator, dtype=torch.float64)
    right = torch.rand(queries, generator=generator, dtype=torch.float64) < (
        confidence - overconfidence
    )
    labels = torch.where(right, 0, 1)
    probabilities = torch.stack([confidence, 1 - confidence], dim=-1)
    return probabilities.view(100, -1, 2), labels.view(100, -1)


def test_a_calibrated_predictor_scores_an_ece_near_zero():
    summary = calibration_summary(predictive_scores(*synthetic_predictor(0.0), bins=15))
    assert summary["ece"]["value"] < 0.015
    assert summary["ece"]["value"] < summary["ece"]["ci95"] * 2


def test_an_overconfident_predictor_scores_its_gap_as_ece():
    summary = calibration_summary(predictive_scores(*synthetic_predictor(0.2), bins=15))
    assert summary["ece"]["value"] == pytest.approx(0.2, abs=0.02)
    assert 0 < summary["ece"]["ci95"] < 0.02


def test_the_summary_pools_every_query_and_resamples_episodes_reproducibly():
    measures = predictive_scores(*synthetic_predictor(0.1), bins=15)
    summary = calibration_summary(measures)
    ece, mce = calibration_errors(measures["reliability"].sum(0))
    assert summary["ece"]["value"] == ece.item() and summary["mce"]["value"] == mce.item()
    assert sum(summary["reliability"]["queries"]) == 20000
    assert calibration_summary(measures) == summary


@pytest.mark.parametrize("algo", CLASSIFIERS)
def test_every_classifiers_predictive_distribution_gives_its_test_accuracy(tiny_cfg, algo):
    cfg = tiny_cfg(f"algo={algo}", "task.ways=3", "task.shots=2", "backbone.hidden=4")
    dataset = TinyImages()
    torch.manual_seed(0)
    model = build_algorithm(cfg, dataset)
    batch = dataset.sampler("test", 3, 2, 2, "cpu").sample(2, torch.Generator().manual_seed(0))
    probabilities = Engine("loop").query_outputs(model, batch, None, model.probabilities)
    assert probabilities.shape == (2, 6, 3)
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(2, 6))
    accuracy = predictive_scores(probabilities, batch.query_y, bins=15)["accuracy"]
    torch.testing.assert_close(accuracy, Engine("loop").scores(model, batch))


def test_a_runs_results_report_and_plot_carry_its_calibration(tiny_cfg, tmp_path):
    results = run.train(tiny_cfg("algo=protonet"), tmp_path)
    calibration = json.loads((tmp_path / "results.json").read_text())["calibration"]
    assert calibration == results["calibration"] and calibration["bins"] == 15
    assert sum(calibration["reliability"]["queries"]) == 6 * 5 * 2  # episodes x ways x queries
    assert "ECE" in markdown(find_runs([tmp_path]))
    from metarun import plot

    (picture,) = plot.reliability_diagrams(find_runs([tmp_path]), tmp_path / "plots")
    assert picture.name == f"reliability_{tmp_path.name}.png" and picture.stat().st_size > 0


def test_regression_nll_and_coverage_match_a_hand_computation():
    gaussian = torch.tensor([[[0.0, 1.0], [1.0, 0.5]]]).double()  # (mean, std) of two queries
    targets = torch.tensor([[[0.5], [2.5]]]).double()  # z = 0.5 and 3.0
    scores = gaussian_scores(gaussian, targets, noise_std=None)
    nll = 0.5 * math.log(2 * math.pi) + 0.125 + math.log(0.5) + 0.5 * math.log(2 * math.pi) + 4.5
    assert scores["nll"].item() == pytest.approx(nll / 2)
    assert scores["coverage95"].item() == 0.5 and scores["mse"].item() == pytest.approx(1.25)


def test_exact_gaussian_predictions_cover_95_percent_of_their_targets():
    generator = torch.Generator().manual_seed(0)
    mean = torch.randn(50, 400, 1, generator=generator, dtype=torch.float64)
    std = 0.1 + torch.rand(50, 400, 1, generator=generator, dtype=torch.float64)
    targets = mean + std * torch.randn(50, 400, 1, generator=generator, dtype=torch.float64)
    summary = regression_summary(gaussian_scores(torch.cat([mean, std], -1), targets, None), None)
    assert summary["coverage95"]["mean"] == pytest.approx(0.95, abs=0.005)


def test_a_point_predictor_has_a_likelihood_only_with_a_noise_level():
    gaussian = torch.tensor([[[0.0, 0.0], [1.0, 0.0]]])  # MAML-like: std 0
    targets = torch.tensor([[[0.0], [1.0]]])
    assert set(gaussian_scores(gaussian, targets, None)) == {"mse"}
    with_noise = gaussian_scores(gaussian, targets, noise_std=1.0)
    assert with_noise["nll"].item() == pytest.approx(0.5 * math.log(2 * math.pi))


def test_requiring_nll_of_a_point_predictor_without_a_noise_level_fails_before_training(tmp_path):
    overrides = [
        "algo=maml",
        "dataset=sinusoid",
        "backbone=mlp",
        *SHORT_REGRESSION_RUN,
        "eval.require_nll=true",
    ]
    with pytest.raises(ConfigError, match=r"eval\.require_nll=true asks .* algo=MAML predicts a"):
        train_runs(tmp_path / "without", overrides, 10)
    assert [p.name for p in (tmp_path / "without").rglob("*.*")] == ["config.yaml"]
    (with_noise,) = train_runs(tmp_path / "with", [*overrides, "eval.noise_std=0.5"], 0)
    assert with_noise["calibration"]["noise_std"] == 0.5


def test_requiring_nll_of_a_predictive_distribution_needs_no_noise_level(tmp_path):
    overrides = [
        "algo=cnp",
        "dataset=sinusoid",
        "backbone=mlp",
        *SHORT_REGRESSION_RUN,
        "eval.require_nll=true",
    ]
    (results,) = train_runs(tmp_path, overrides, 0)
    assert results["calibration"]["noise_std"] is None and "nll" in results["calibration"]
