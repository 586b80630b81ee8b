"""Every experiment preset resolves to its paper's setting (or the choice its file states), and
no preset hides its values in a chain of presets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from metarun.show import settings

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

# preset: (train ways, shots, queries per class, meta-batch, inner lr, inner steps at
# training, at test, iterations, bn). Sources: MAML (Finn et al. 2017, App. A.1), ANIL
# (Raghu et al. 2019: MAML's setting), Meta-SGD (Li et al. 2017: one inner step), iMAML
# (Rajeswaran et al. 2019), MAML++ (Antoniou et al. 2019: 5 steps of 0.1), ProtoNet (Snell et
# al. 2017: 60-way training, 5 queries), Relation Networks (Sung et al. 2018: 19/15/10/5 queries,
# 1M episodes), Reptile (Nichol et al. 2018, Omniglot: 10-shot inner batches, 5 steps, 50 at
# test); Matching Networks, LSTM meta-learner and Baseline schedules are the presets' stated
# choices.
PAPERS = {
    "maml_omniglot_5w1s": (5, 1, 1, 32, 0.4, 1, 3, 60000, "transductive"),
    "adml_omniglot_5w1s": (5, 1, 1, 32, 0.4, 1, 3, 60000, "transductive"),  # MAML's, ADML's loss
    "maml_omniglot_5w5s": (5, 5, 5, 32, 0.4, 1, 3, 60000, "transductive"),
    "maml_omniglot_20w1s": (20, 1, 1, 16, 0.1, 5, 5, 60000, "transductive"),
    "maml_omniglot_20w5s": (20, 5, 5, 16, 0.1, 5, 5, 60000, "transductive"),
    "maml_sinusoid": (1, 10, 10, 25, 0.01, 1, 1, 70000, "transductive"),
    "anil_omniglot_5w1s": (5, 1, 1, 32, 0.4, 1, 3, 60000, "transductive"),
    "anil_omniglot_20w1s": (20, 1, 1, 16, 0.1, 5, 5, 60000, "transductive"),
    "anil_omniglot_20w5s": (20, 5, 5, 16, 0.1, 5, 5, 60000, "transductive"),
    "meta_sgd_omniglot_5w1s": (5, 1, 1, 32, 0.4, 1, 1, 60000, "transductive"),
    "meta_sgd_omniglot_5w5s": (5, 5, 5, 32, 0.4, 1, 1, 60000, "transductive"),
    "meta_sgd_omniglot_20w1s": (20, 1, 1, 16, 0.4, 1, 1, 60000, "transductive"),
    "imaml_omniglot_5w1s": (5, 1, 1, 32, 0.03, 16, 16, 60000, "transductive"),
    "imaml_omniglot_5w1s_released": (5, 1, 1, 16, 0.01, 16, 16, 60000, "transductive"),
    "imaml_omniglot_20w1s": (20, 1, 1, 16, 0.03, 25, 25, 60000, "transductive"),
    "maml_plus_plus_omniglot_5w1s": (5, 1, 1, 8, 0.1, 5, 5, 75000, "transductive"),
    "maml_plus_plus_omniglot_20w1s": (20, 1, 1, 8, 0.1, 5, 5, 75000, "transductive"),
    "lstm_meta_learner_omniglot_5w1s": (5, 1, 15, 8, None, 12, 12, 20000, "transductive"),
    "lstm_meta_learner_omniglot_20w1s": (20, 1, 15, 8, None, 12, 12, 20000, "transductive"),
    "reptile_omniglot_5w1s": (5, 10, 1, 5, 0.001, 5, 50, 100000, "transductive"),
    "reptile_omniglot_20w1s": (20, 10, 1, 5, 0.001, 5, 50, 100000, "transductive"),
    "protonet_omniglot_5w1s": (60, 1, 5, 1, None, None, None, 20000, "running"),
    "protonet_adversarial_omniglot_5w1s": (60, 1, 5, 1, None, None, None, 20000, "running"),
    "protonet_omniglot_5w5s": (60, 5, 5, 1, None, None, None, 20000, "running"),
    "protonet_omniglot_20w1s": (60, 1, 5, 1, None, None, None, 20000, "running"),
    "matching_net_omniglot_5w1s": (5, 1, 5, 16, None, None, None, 20000, "transductive"),
    "matching_net_omniglot_5w5s": (5, 5, 5, 16, None, None, None, 20000, "transductive"),
    "matching_net_omniglot_20w1s": (20, 1, 5, 16, None, None, None, 20000, "transductive"),
    "matching_net_omniglot_20w5s": (20, 5, 5, 16, None, None, None, 20000, "transductive"),
    "relation_net_omniglot_5w1s": (5, 1, 19, 1, None, None, None, 1000000, "transductive"),
    "relation_net_omniglot_5w5s": (5, 5, 15, 1, None, None, None, 1000000, "transductive"),
    "relation_net_omniglot_20w1s": (20, 1, 10, 1, None, None, None, 1000000, "transductive"),
    "relation_net_omniglot_20w5s": (20, 5, 5, 1, None, None, None, 1000000, "transductive"),
    "baseline_omniglot": (5, 1, 15, 1, None, None, None, 20000, "running"),
    "baseline_plus_plus_omniglot": (5, 1, 15, 1, None, None, None, 20000, "running"),
    "nearest_neighbour_omniglot": (5, 1, 15, 32, None, None, None, 0, "transductive"),
    # SNAIL (Mishra et al. 2018, Sec. 5.1): shots drawn from 1..5 (the 5 here is the largest),
    # tested 1-shot; queries, meta-batch and iterations are the preset's stated choices.
    "snail_omniglot_5w1s": (5, 5, 1, 32, None, None, None, 40000, "transductive"),
    "snail_omniglot_20w1s": (20, 5, 1, 32, None, None, None, 40000, "transductive"),
    # MANN and its LSTM baseline (Santoro et al. 2016, Sec. 4.1): online sequences of 5 classes x
    # 10 instances (shots count instances; queries are unused), 16 episodes per update.
    # Meta Networks (Munkhdalai & Yu 2017): queries, meta-batch and iterations are the preset's.
    "meta_net_omniglot_5w1s": (5, 1, 1, 4, None, None, None, 100000, "transductive"),
    "meta_net_omniglot_20w1s": (20, 1, 1, 4, None, None, None, 100000, "transductive"),
    "mann_omniglot_online": (5, 10, 15, 16, None, None, None, 100000, "transductive"),
    "lstm_baseline_omniglot_online": (5, 10, 15, 16, None, None, None, 100000, "transductive"),
    # CNP (Garnelo et al. 2018, the notebook): 3..9 contexts and 2..9 further targets per batch.
    "cnp_gp_1d": (1, 9, 9, 64, None, None, None, 200000, "transductive"),
    "cnp_omniglot_5w1s": (5, 1, 5, 16, None, None, None, 20000, "transductive"),
    "cnp_omniglot_20w1s": (20, 1, 5, 4, None, None, None, 20000, "transductive"),
    "cnp_omniglot_completion": (1, 300, 100, 16, None, None, None, 50000, "transductive"),
    # Bayesian MAML and ABML on Omniglot: our settings, stated in each preset (the papers test
    # classification on miniImageNet only).
    "bayesian_maml_omniglot_5w1s": (5, 1, 1, 16, 0.2, 1, 1, 20000, "transductive"),
    # Bayesian MAML's sinusoids (Yoon et al. 2018; jaesik817/bmaml: 10 tasks per update, SVGD
    # steps of 1e-3, 10,000 epochs of 10 batches).
    "bayesian_maml_sinusoid": (1, 5, 5, 10, 0.001, 1, 1, 100000, "transductive"),
    "bayesian_maml_omniglot_20w1s": (20, 1, 1, 8, 0.2, 1, 1, 20000, "transductive"),
    "abml_omniglot_5w1s": (5, 1, 1, 16, 0.05, 5, 5, 20000, "transductive"),
    "abml_omniglot_20w1s": (20, 1, 1, 8, 0.05, 5, 5, 20000, "transductive"),
    # Meta-RL (MAML, Sec. 5.3 and App. A.2): shots and queries count trajectories per task; the
    # pretrained baseline trains without inner steps; navigation as the released code ran it (0.5,
    # 100 iterations; the text's 0.1 in _text); half-cheetah 800 as in the released script.
    "maml_rl_navigation_2d": (1, 20, 20, 20, 0.5, 1, 3, 100, "transductive"),
    "maml_rl_navigation_2d_text": (1, 20, 20, 20, 0.1, 1, 3, 500, "transductive"),
    "fomaml_rl_navigation_2d": (1, 20, 20, 20, 0.5, 1, 3, 100, "transductive"),
    "pretrained_rl_navigation_2d": (1, 20, 20, 20, 0.5, 0, 3, 100, "transductive"),
    "maml_rl_half_cheetah_dir": (1, 20, 20, 40, 0.1, 1, 1, 800, "transductive"),
    "maml_rl_half_cheetah_vel": (1, 20, 20, 40, 0.1, 1, 1, 800, "transductive"),
    # miniImageNet: MAML (Finn et al. 2017, App. A.1: 5 steps of 0.01, 10 at test, 4 and 2 tasks),
    # ProtoNet (Snell et al. 2017: 30- and 20-way training, 15 queries), Relation Networks (Sung
    # et al. 2018: 15 and 10 queries, 500k episodes), Baseline++ (Chen et al. 2019: 400 epochs of
    # batches of 16), ProtoNet with ResNet-12 (MetaOptNet: 15-shot training, 6 queries, 8 tasks);
    # Matching Networks' schedule is the preset's stated choice.
    "maml_mini_imagenet_5w1s": (5, 1, 15, 4, 0.01, 5, 10, 60000, "transductive"),
    "maml_mini_imagenet_5w5s": (5, 5, 15, 2, 0.01, 5, 10, 60000, "transductive"),
    "protonet_mini_imagenet_5w1s": (30, 1, 15, 1, None, None, None, 20000, "running"),
    "protonet_mini_imagenet_5w5s": (20, 5, 15, 1, None, None, None, 20000, "running"),
    "matching_net_mini_imagenet_5w1s": (5, 1, 15, 4, None, None, None, 20000, "transductive"),
    "matching_net_mini_imagenet_5w5s": (5, 5, 15, 4, None, None, None, 20000, "transductive"),
    "relation_net_mini_imagenet_5w1s": (5, 1, 15, 1, None, None, None, 500000, "transductive"),
    "relation_net_mini_imagenet_5w5s": (5, 5, 10, 1, None, None, None, 500000, "transductive"),
    "baseline_plus_plus_mini_imagenet_5w1s": (5, 1, 15, 1, None, None, None, 960000, "running"),
    "baseline_plus_plus_mini_imagenet_5w5s": (5, 5, 15, 1, None, None, None, 960000, "running"),
    "protonet_resnet12_mini_imagenet_5w1s": (5, 15, 6, 8, None, None, None, 60000, "running"),
    "protonet_resnet12_mini_imagenet_5w5s": (5, 15, 6, 8, None, None, None, 60000, "running"),
}
PRESETS = sorted(path.stem for path in (CONFIGS / "experiment").glob("*.yaml"))


def test_every_preset_is_in_the_table():
    assert sorted(PAPERS) == PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_preset_resolves_to_its_paper_setting(name):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", [f"experiment={name}"])
    shown = settings(cfg)
    resolved = (
        cfg.task.train_ways,
        cfg.task.shots,
        cfg.task.queries,
        cfg.task.meta_batch_size,
        shown["inner_lr"],
        shown["inner_steps_train"],
        shown["inner_steps_test"],
        shown["iterations"],
        shown["bn"],
    )
    assert resolved == PAPERS[name]


@pytest.mark.parametrize("name", PRESETS)
def test_preset_inherits_from_at_most_one_other_preset(name):
    parents = [
        entry
        for entry in yaml.safe_load((CONFIGS / "experiment" / f"{name}.yaml").read_text())[
            "defaults"
        ]
        if isinstance(entry, str) and not entry.startswith("/")
    ]
    for parent in parents:
        grandparents = yaml.safe_load((CONFIGS / "experiment" / f"{parent}.yaml").read_text())[
            "defaults"
        ]
        assert all(not isinstance(e, str) or e.startswith("/") for e in grandparents), (
            name,
            parent,
        )


@pytest.mark.parametrize(
    "name, augment",
    [
        ("protonet_resnet12_mini_imagenet_5w1s", "RandomCrop, ColorJitter, RandomHorizontalFlip"),
        (
            "baseline_plus_plus_mini_imagenet_5w5s",
            "RandomResizedCrop, ColorJitter, RandomHorizontalFlip",
        ),
        ("protonet_mini_imagenet_5w1s", "none"),
    ],
)
def test_preset_shows_its_training_augmentation(name, augment):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", [f"experiment={name}"])
    assert settings(cfg)["augment"] == augment
