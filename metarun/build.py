"""The one place that turns configs into objects (hydra.utils.instantiate) and checks them."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from metarun import attacks, batchnorm
from metarun.algorithms.base import Algorithm
from metarun.attacks import Attack, make_attack, pixel_range
from metarun.data.base import LabelledDataset, SequenceDataset
from metarun.data.environments import EnvironmentDataset
from metarun.errors import ConfigError


def _config_dir() -> Path:
    """The configs an installed wheel carries inside the package, else a checkout's configs/."""
    package = Path(__file__).resolve().parent
    return next(p for p in (package / "configs", package.parent / "configs") if p.is_dir())


CONFIG_DIR = str(_config_dir())
# How a run computes rather than what it learns: the keys of configs/runtime/default.yaml.
RUNTIME_SETTINGS = tuple(OmegaConf.load(Path(CONFIG_DIR) / "runtime" / "default.yaml"))

COUNTS = (  # whole numbers greater than zero
    "task.ways",
    "task.shots",
    "task.queries",
    "task.meta_batch_size",
    "task.train_ways",
    "task.batch_size",
    "task.min_shots",
    "task.min_queries",
    "trainer.log_every",
    "trainer.val_every",
    "trainer.val_episodes",
    "trainer.ckpt_every",
    "eval.episodes",
    "eval.queries",
    "eval.ways",
    "eval.shots",
    "eval.batch_tasks",
    "eval.calibration_bins",
)
STEP_COUNTS = (
    "algo.inner_steps",
    "eval.inner_steps",
    "trainer.iterations",
)  # whole numbers, zero allowed
RATES = (  # numbers greater than zero
    "optimizer.lr",
    "algo.inner_lr",
    "trainer.clip_grad_norm",
    "eval.noise_std",
)
PROTOCOLS = ("episodic", "online")
ATTACK_KEYS = ("epsilon", "attack_steps", "attack_step_size")  # under task. and eval.
CHOICES = {
    "trainer.nonfinite": ("stop", "skip"),
    "bn": tuple(batchnorm.MODES),
    "task.protocol": PROTOCOLS,
    "eval.protocol": PROTOCOLS,
    "eval.require_nll": (True, False),
    "task.attack": attacks.KINDS,
    "eval.attack": attacks.KINDS,
    "eval.attack_target": attacks.TARGETS,
}


def _select(cfg: DictConfig, key: str):
    node = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return None
        node = node[part]
    return node


def check_settings(cfg: DictConfig) -> None:
    """Rejects missing values, counts, rates and choices that cannot work, naming the setting."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"{missing[0]} has no value (its config leaves it as ???). Give it on the command "
            f"line, e.g. {missing[0]}=<value>; configs/ says what it means."
        )
    for key, allowed in CHOICES.items():
        value = _select(cfg, key)
        if value is not None and value not in allowed:
            raise ConfigError(
                f"{key}={value!r} is not one of {', '.join(map(str, allowed))}. Set {key} to "
                "one of them."
            )
    for key in COUNTS + STEP_COUNTS + RATES:
        value = _select(cfg, key)
        if value is None:
            continue
        whole = key not in RATES
        if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
            kind = "a whole number" if whole else "a number"
            raise ConfigError(f"{key}={value!r} is not {kind}. Set {key} to {kind}.")
        if value < 0 or (value == 0 and key not in STEP_COUNTS):
            bound = "zero or more" if key in STEP_COUNTS else "greater than zero"
            raise ConfigError(f"{key}={value} is not allowed: it must be {bound}. Change {key}.")
    _check_shape_ranges(cfg)


def _check_shape_ranges(cfg: DictConfig) -> None:
    """task.min_shots and task.min_queries: ranges of episodic training, low <= high."""
    for name in ("shots", "queries"):
        low, high = _select(cfg, f"task.min_{name}"), _select(cfg, f"task.{name}")
        if low is None:
            continue
        if _select(cfg, "task.protocol") == "online":
            raise ConfigError(
                f"task.min_{name} draws the {name} of episodic training, but task.protocol=online "
                f"shows task.shots instances of every class. Drop task.min_{name} (null) or use "
                "task.protocol=episodic."
            )
        if low > high:
            raise ConfigError(
                f"task.min_{name}={low} is above task.{name}={high}: the {name} of each "
                f"meta-batch are drawn from min_{name}..{name}. Lower task.min_{name} or raise "
                f"task.{name}."
            )


def build(group: str, node: DictConfig, **kwargs):
    """instantiate() with failures reported as the config group to fix."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(
            f"The '{group}' config could not be built: {cause or error}. Check the "
            f"keys under {group}. in the command line and configs/{group}/."
        ) from None


def _algorithm_class(cfg: DictConfig) -> type[Algorithm]:
    try:
        return get_class(cfg.algo._target_)
    except Exception as error:
        raise ConfigError(
            f"algo._target_={cfg.algo.get('_target_')!r} names no importable class ({error}). "
            "Check the _target_ line of the algo config."
        ) from None


def _labelled_classes(cfg: DictConfig, dataset) -> int:
    if not isinstance(dataset, LabelledDataset):
        raise ConfigError(
            f"algo={cfg.algo._target_.rsplit('.', 1)[-1]} trains as a classifier on labelled "
            f"batches of classes, which dataset {type(dataset).__name__} does not have. "
            "Use a classification dataset such as dataset=omniglot."
        )
    return dataset.num_classes("train")


def _check_task_kind(cfg: DictConfig, dataset) -> None:
    """Environment tasks need an algorithm that collects its own trajectories, and only those."""
    environments = isinstance(dataset, EnvironmentDataset)
    collects = _algorithm_class(cfg).capabilities.learns_from == "environments"
    if environments == collects:
        return
    name = cfg.algo._target_.rsplit(".", 1)[-1]
    if environments:
        raise ConfigError(
            f"algo={name} learns from labelled episodes, but dataset {type(dataset).__name__} "
            "gives environment tasks (reinforcement learning). Use an algorithm for "
            "environments, e.g. algo=maml_rl or algo=fomaml_rl (configs/algo/*_rl.yaml)."
        )
    raise ConfigError(
        f"algo={name} learns from environment tasks (it collects trajectories), but dataset "
        f"{type(dataset).__name__} gives labelled episodes. Use an environment dataset "
        "(dataset=navigation_2d, half_cheetah_dir or half_cheetah_vel), or an algorithm for "
        "episodes such as algo=maml."
    )


def _check_nll_request(cfg: DictConfig, dataset) -> None:
    """eval.require_nll on a regression dataset: the test must be able to score a likelihood,
    checked before any training. A classifier's probabilities always give one."""
    if not _select(cfg, "eval.require_nll") or getattr(dataset, "metric", None) != "mse":
        return
    if (
        _algorithm_class(cfg).capabilities.predicts_distribution
        or _select(cfg, "eval.noise_std") is not None
    ):
        return
    name = cfg.algo._target_.rsplit(".", 1)[-1]
    raise ConfigError(
        f"eval.require_nll=true asks for the test's negative log-likelihood, but algo={name} "
        "predicts a point, not a distribution, so it has no likelihood of its own. Set "
        "eval.noise_std to the Gaussian noise level to assume around its predictions (e.g. "
        "eval.noise_std=0.5; results.json records it), or use an algorithm with a predictive "
        "distribution (algo=cnp, neural_process, bayesian_maml or abml)."
    )


def _check_protocol(cfg: DictConfig, dataset) -> None:
    """The online protocol needs a learner that reads sequences and a dataset that has them."""
    key = next((k for k in ("task.protocol", "eval.protocol") if _select(cfg, k) == "online"), "")
    if not key:
        return
    name = cfg.algo._target_.rsplit(".", 1)[-1]
    if not _algorithm_class(cfg).capabilities.reads_sequences:
        raise ConfigError(
            f"{key}=online shows an episode as one sequence, predicting each example before its "
            f"label, but algo={name} does not read sequences. Use a sequence learner (algo=mann, "
            f"lstm_baseline or snail), or {key}=episodic."
        )
    if not isinstance(dataset, SequenceDataset):
        raise ConfigError(
            f"{key}=online needs a classification dataset of images, which dataset "
            f"{type(dataset).__name__} is not. Use dataset=omniglot, or {key}=episodic."
        )


def build_algorithm(cfg: DictConfig, dataset) -> Algorithm:
    """Backbone sized from the dataset's inputs; head sized from the backbone and task."""
    _check_task_kind(cfg, dataset)
    _check_protocol(cfg, dataset)
    _check_nll_request(cfg, dataset)
    backbone = build("backbone", cfg.backbone, input_shape=tuple(dataset.input_shape))
    if _algorithm_class(cfg).capabilities.learns_from != "labelled_batches":
        classes = dataset.out_features(cfg.task.ways)
    else:
        classes = _labelled_classes(cfg, dataset)
    attack = _train_attack(cfg, dataset)
    algo = build("algo", cfg.algo, backbone=backbone, out_features=classes)
    algo.train_attack = attack
    batchnorm.use_mode(algo, cfg.bn)
    return algo


def _train_attack(cfg: DictConfig, dataset) -> Attack | None:
    """task.attack: the attack meta-training perturbs its examples with, checked against the
    algorithm (does its loss use one; does it need one) and the dataset (a pixel range)."""
    kind, cls = _select(cfg, "task.attack") or "none", _algorithm_class(cfg)
    name = cfg.algo._target_.rsplit(".", 1)[-1]
    if kind == "none":
        if cls.capabilities.needs_train_attack:
            raise ConfigError(
                f"algo={name} meta-trains on adversarial examples, and task.attack=none gives "
                "it none. Set task.attack=fgsm (or pgd) and task.epsilon (e.g. "
                f"experiment={name.lower()}_omniglot_5w1s does), or use algo=maml for clean "
                "meta-training."
            )
        return None
    if not cls.applies_train_attack():
        raise ConfigError(
            f"task.attack={kind} perturbs the queries of the shared meta-training loss, but "
            f"algo={name} meta-trains with a loss of its own that does not use it. Set "
            "task.attack=none, or use an algorithm scored on its adapted queries (maml, "
            "protonet, matching_net, anil, meta_sgd) or algo=adml."
        )
    epsilon, steps, step_size = (_select(cfg, f"task.{key}") for key in ATTACK_KEYS)
    return make_attack(kind, epsilon, steps, step_size, pixel_range(dataset, "task.attack"), "task")


def build_optimizer(
    cfg: DictConfig, algo: Algorithm
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """The outer optimiser and, when configured, its learning-rate scheduler."""
    optimizer = build("optimizer", cfg.optimizer)(algo.parameters())
    scheduler = build("scheduler", cfg.scheduler)(optimizer) if cfg.get("scheduler") else None
    return optimizer, scheduler
