"""Image completion: each image a task, pixel coordinates in, intensities out."""

from __future__ import annotations

import pytest
import torch
from conftest import CONFIGS
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from synthetic import TinyImages

from metarun import pictures, run
from metarun.data.completion import ImageCompletion, pixel_coordinates
from metarun.errors import ConfigError
from metarun.report import find_runs


def completion() -> ImageCompletion:
    return ImageCompletion(TinyImages(classes=4, per_class=3, image_size=6))


def test_contexts_are_pixels_of_the_image_at_their_coordinates():
    sampler = completion().sampler("train", 1, 5, 7, "cpu")
    plan = sampler.draw(3, torch.Generator().manual_seed(0))
    batch = sampler.build(plan)
    assert batch.support_x.shape == (3, 5, 2) and batch.query_x.shape == (3, 12, 2)
    grid = pixel_coordinates(6, 6)
    for task in range(3):
        image = sampler.images[plan[task, 0]].float() / 255
        pixels = plan[task, 1:6]
        torch.testing.assert_close(batch.support_x[task], grid[pixels])
        torch.testing.assert_close(batch.support_y[task, :, 0], image[pixels])
        torch.testing.assert_close(batch.query_y[task, :5], batch.support_y[task])  # targets too


def test_test_episodes_target_every_pixel_once():
    sampler = completion().sampler("test", 1, 10, 1, "cpu")
    plan = sampler.draw(2, torch.Generator().manual_seed(0))
    assert plan.shape == (2, 1 + 36)
    assert all(sorted(row[1:].tolist()) == list(range(36)) for row in plan)


def test_more_context_pixels_than_the_image_has_are_refused():
    with pytest.raises(ConfigError, match="shots=40 context pixels"):
        completion().sampler("test", 1, 40, 1, "cpu")


def test_plot_draws_context_mean_std_and_image(tmp_path):
    tiny = ["debug=tiny"]
    overrides = [
        *tiny,
        "algo=cnp",
        "backbone=pixels",
        "task.ways=1",
        "task.shots=5",
        "trainer.iterations=0",
        "algo.encoder=[8]",
        "algo.decoder=[8]",
    ]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides)
    with open_dict(cfg):
        cfg.dataset = {
            "_target_": "metarun.data.completion.ImageCompletion",
            "images": {"_target_": "synthetic.TinyImages", "image_size": 6},
        }
    results = run.train(cfg, tmp_path / "run")
    assert results["metric"] == "mse" and "coverage95" in results["calibration"]
    (picture,) = pictures.completion_pictures(find_runs([tmp_path / "run"]), tmp_path / "plots")
    assert picture.name == "completion_run.png" and picture.stat().st_size > 0
