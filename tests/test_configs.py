"""Every config file composes and instantiates."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import CONFIGS

from metarun.build import build, build_algorithm, build_optimizer, check_settings

GROUP_FILES = sorted((p.parent.name, p.stem) for p in CONFIGS.glob("*/*.yaml"))
COMPANIONS = {"dataset/sinusoid": ["backbone=mlp"], "backbone/mlp": ["dataset=sinusoid"]}
ADDED_GROUPS = ("preset",)
EXPERIMENTS = [name for group, name in GROUP_FILES if group == "experiment"]


def instantiate_everything(cfg):
    check_settings(cfg)
    dataset = build("dataset", cfg.dataset)
    algo = build_algorithm(cfg, dataset)
    build_optimizer(cfg, algo)
    return dataset, algo


@pytest.mark.parametrize("group, name", [g for g in GROUP_FILES if g[0] != "experiment"])
def test_group_option_composes_and_instantiates(make_cfg, group, name):
    companions = COMPANIONS.get(f"{group}/{name}", [])
    added = "+" if group in ADDED_GROUPS else ""  # groups train.yaml does not choose by default
    instantiate_everything(make_cfg(f"{added}{group}={name}", *companions))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_instantiates(make_cfg, name):
    instantiate_everything(make_cfg(f"experiment={name}"))


def test_eval_config_composes(make_cfg):
    cfg = make_cfg("run_dir=somewhere", config="eval")
    assert cfg.checkpoint == "best"


def test_every_experiment_file_is_a_global_delta():
    for path in Path(CONFIGS, "experiment").glob("*.yaml"):
        assert path.read_text().startswith("# @package _global_"), path
