"""Every config file composes and instantiates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import CONFIGS
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import open_dict

from metarun.build import build, build_algorithm, build_optimizer, check_settings
from metarun.data.class_images import ClassImages
from metarun.data.omniglot import Omniglot

GROUP_FILES = sorted((p.parent.name, p.stem) for p in CONFIGS.glob("*/*.yaml"))
RL = ["algo=maml_rl", "dataset=navigation_2d", "backbone=mlp"]
COMPANIONS = {
    "dataset/sinusoid": ["backbone=mlp"],
    "dataset/sinusoid_bmaml": ["backbone=mlp"],
    "backbone/mlp": ["dataset=sinusoid"],
    "dataset/gp_1d": ["backbone=pixels", "algo=cnp"],
    "algo/cnp": ["dataset=gp_1d", "backbone=pixels"],
    "algo/adml": ["task.attack=fgsm"],  # ADML meta-trains on an attack
    "augment/chen": ["dataset=mini_imagenet"],  # transforms of an image benchmark's images
    "augment/metaoptnet": ["dataset=mini_imagenet"],
    "dataset/omniglot_completion": ["backbone=pixels", "algo=cnp"],
    **{
        f"dataset/{name}": RL[::2]
        for name in ("navigation_2d", "half_cheetah_dir", "half_cheetah_vel")
    },
    **{f"algo/{name}": RL[1:] for name in ("maml_rl", "fomaml_rl")},
    "optimizer/trpo": RL,
    "preset/meta_rl": RL[1:2],
}
ADDED_GROUPS = ("preset",)
EXPERIMENTS = [name for group, name in GROUP_FILES if group == "experiment"]


def compose_without_data(*overrides: str):
    """The train config; Omniglot and the image benchmarks replaced by the in-memory TinyImages
    (same image interface, their image size and channels), so every group and preset is built
    without a data folder. An image benchmark's augmentation is built and tried on one image."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", list(overrides))
    target = get_class(cfg.dataset._target_)
    if target is Omniglot:
        with open_dict(cfg):
            cfg.dataset = {"_target_": "synthetic.TinyImages", "image_size": 28}
    elif issubclass(target, ClassImages):
        size = cfg.dataset.image_size
        if cfg.dataset.augment is not None:
            image = torch.rand(3, size, size)
            assert build("dataset", cfg.dataset.augment)(image).shape == image.shape
        with open_dict(cfg):
            cfg.dataset = {"_target_": "synthetic.TinyImages", "image_size": size, "channels": 3}
    return cfg


def instantiate_everything(cfg):
    check_settings(cfg)
    dataset = build("dataset", cfg.dataset)
    algo = build_algorithm(cfg, dataset)
    build_optimizer(cfg, algo)
    return dataset, algo


@pytest.mark.parametrize("group, name", [g for g in GROUP_FILES if g[0] != "experiment"])
def test_group_option_composes_and_instantiates(group, name):
    companions = COMPANIONS.get(f"{group}/{name}", [])
    added = "+" if group in ADDED_GROUPS else ""  # groups train.yaml does not choose by default
    instantiate_everything(compose_without_data(f"{added}{group}={name}", *companions))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_instantiates(name):
    instantiate_everything(compose_without_data(f"experiment={name}"))


def test_omniglot_config_builds_the_real_dataset(make_cfg):
    dataset, _ = instantiate_everything(make_cfg("dataset=omniglot", "algo=baseline"))
    assert dataset.num_classes("train") == 4112


def test_eval_config_composes(make_cfg):
    cfg = make_cfg("run_dir=somewhere", config="eval")
    assert cfg.checkpoint == "best"


def test_every_experiment_file_is_a_global_delta():
    for path in Path(CONFIGS, "experiment").glob("*.yaml"):
        assert path.read_text().startswith("# @package _global_"), path
