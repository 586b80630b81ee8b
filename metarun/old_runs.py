"""Run folders saved by older code: the settings they predate, filled in as those runs used them,
so that `metarun eval`, resume and `metarun.load` rebuild the model that was trained."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf, open_dict

# Values of settings added after the first runs were saved: what those runs did without them.
SETTINGS_OF_OLD_RUNS = {
    "bn": "transductive",
    "precision": "fp32",
    "compile": False,
    "compile_mode": "default",
    "processes": 1,
    "threads": "auto",
    "channels_last": False,
    "keep_freed_memory": False,
    "eval.ways": "${task.ways}",
    "task.min_shots": None,
    "task.min_queries": None,
    "task.protocol": "episodic",
    "eval.protocol": "${task.protocol}",
    "eval.calibration_bins": 15,
    "eval.noise_std": None,
    "eval.require_nll": False,
    "task.attack": "none",
    "task.epsilon": 0.1,
    "task.attack_steps": 10,
    "eval.attack": "none",
    "eval.epsilon": 0.1,
    "eval.attack_steps": 10,
    "eval.attack_target": "query",
}


# Settings of one class that changed default, by the config group whose _target_ names it.
SETTINGS_OF_OLD_RUNS_BY_CLASS: dict[tuple[str, str], dict[str, object]] = {
    ("algo", "metarun.algorithms.snail.SNAIL"): {"first_dilation": 1},
    ("algo", "metarun.algorithms.meta_net.MetaNet"): {"join_before_pooling": False},
    ("algo", "metarun.algorithms.maml_rl.MAMLRL"): {"policy_init": "torch"},
    ("algo", "metarun.algorithms.reptile.Reptile"): {"inner_state": "fresh"},
    ("dataset", "metarun.data.half_cheetah.HalfCheetah"): {"simulator": "gymnasium"},
}


def upgrade_old_config(cfg: DictConfig) -> DictConfig:
    """A run folder's saved config with the settings it predates filled in as that run used them."""
    with open_dict(cfg):
        for key, value in SETTINGS_OF_OLD_RUNS.items():
            if OmegaConf.select(cfg, key, default=None) is None:
                OmegaConf.update(cfg, key, value, force_add=True)
        for (group, target), settings in SETTINGS_OF_OLD_RUNS_BY_CLASS.items():
            node = cfg.get(group)
            if node is None or node.get("_target_") != target:
                continue
            for key, value in settings.items():
                if key not in node:
                    node[key] = value
    return cfg
