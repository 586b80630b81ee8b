"""FGSM and PGD on inputs, attacked evaluation (queries, support set) and its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from synthetic import TinyImages
from test_report import fake_run
from torch import nn
from torch.func import grad

from metarun import batchnorm
from metarun.algorithms.maml import MAML
from metarun.algorithms.protonet import ProtoNet
from metarun.attacks import Attack, attacked_task, make_attack, true_class_nll
from metarun.backbones.conv4 import Conv4
from metarun.backbones.mlp import MLP
from metarun.build import build_algorithm
from metarun.evaluator import describe
from metarun.report import find_runs, markdown
from metarun.run import train
from metarun.show import settings


def linear_problem():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 4, generator=g, dtype=torch.float64)
    x = torch.rand(5, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1])
    return weight, x, labels


def test_fgsm_is_epsilon_times_the_sign_of_the_input_gradient_of_a_linear_model():
    weight, x, labels = linear_problem()
    x = 0.3 + 0.4 * x  # away from the pixel range's ends: no clipping
    losses = lambda inputs: F.cross_entropy(inputs @ weight.T, labels, reduction="none")
    # by hand: d CE(Wx, y) / dx = W^T (softmax(Wx) - onehot(y))
    by_hand = (torch.softmax(x @ weight.T, -1) - F.one_hot(labels, 3)) @ weight
    attacked = Attack(0.1).perturb(losses, x)
    torch.testing.assert_close(attacked, x + 0.1 * by_hand.sign(), rtol=0, atol=1e-15)


def test_fgsm_clips_to_the_pixel_range():
    weight, x, labels = linear_problem()
    losses = lambda inputs: F.cross_entropy(inputs @ weight.T, labels, reduction="none")
    by_hand = (torch.softmax(x @ weight.T, -1) - F.one_hot(labels, 3)) @ weight
    attacked = Attack(0.5).perturb(losses, x)
    torch.testing.assert_close(attacked, (x + 0.5 * by_hand.sign()).clamp(0, 1))


def tiny_classifier():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).double()


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_pgd_stays_in_the_epsilon_ball_and_the_pixel_range(steps):
    model = tiny_classifier()
    x = torch.rand(20, 6, dtype=torch.float64)
    labels = torch.randint(3, (20,))
    losses = lambda inputs: F.cross_entropy(model(inputs), labels, reduction="none")
    attacked = make_attack("pgd", 0.2, steps, None, (0.0, 1.0), "eval").perturb(losses, x)
    assert (attacked - x).abs().max() <= 0.2 + 1e-12
    assert attacked.min() >= 0 and attacked.max() <= 1
    assert (attacked != x).any()


def test_more_pgd_steps_never_lower_the_loss_of_any_example():
    model = tiny_classifier()
    x = torch.rand(20, 6, dtype=torch.float64)
    labels = torch.randint(3, (20,))
    losses = lambda inputs: F.cross_entropy(model(inputs), labels, reduction="none")
    reached = []
    for steps in range(1, 9):
        torch.manual_seed(5)  # the same random start for every step count
        attack = Attack(0.3, steps, 0.05, random_start=True)
        reached.append(losses(attack.perturb(losses, x)).detach())
    for fewer, more in zip(reached, reached[1:]):
        assert (more >= fewer).all()
    assert (reached[-1] > losses(x)).all()


def test_an_attack_runs_in_float32_under_bf16_autocast():
    model = tiny_classifier().float()
    x = torch.rand(20, 6)
    labels = torch.randint(3, (20,))
    losses = lambda inputs: F.cross_entropy(model(inputs), labels, reduction="none")
    attack = Attack(0.1, 5, 0.03)
    plain = attack.perturb(losses, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = attack.perturb(losses, x)
    torch.testing.assert_close(autocast, plain, rtol=0, atol=0)


def test_an_attacks_trial_passes_leave_running_statistics_alone():
    backbone = Conv4((1, 8, 8), hidden=4, blocks=2)
    algo = MAML(backbone, 2, inner_lr=0.1, inner_steps=1)
    batchnorm.use_mode(algo, "running")
    before = {k: v.clone() for k, v in algo.state_dict().items() if "running" in k}
    x, labels = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 0, 1])
    losses = lambda inputs: F.cross_entropy(algo(inputs), labels, reduction="none")
    with batchnorm.recording(algo):
        Attack(0.1, 3, 0.05).perturb(losses, x)
    for name, value in before.items():
        torch.testing.assert_close(algo.state_dict()[name], value, rtol=0, atol=0, msg=name)


def maml_task(inner_steps: int, first_order: bool = False):
    torch.manual_seed(0)
    algo = (
        MAML(
            MLP((6,), hidden=[16]),
            3,
            inner_lr=0.5,
            inner_steps=inner_steps,
            first_order=first_order,
        )
        .double()
        .eval()
    )
    g = torch.Generator().manual_seed(3)
    support_x = torch.rand(6, 6, generator=g, dtype=torch.float64)
    query_x = torch.rand(9, 6, generator=g, dtype=torch.float64)
    return algo, support_x, torch.arange(3).repeat(2), query_x, torch.arange(3).repeat(3)


@pytest.mark.parametrize("first_order", [False, True])
def test_a_support_attack_moves_the_adapted_weights_through_the_inner_step(first_order):
    algo, support_x, support_y, query_x, query_y = maml_task(1, first_order)
    queries_loss = lambda s: true_class_nll(
        algo.probabilities(algo.adapt(algo.params(), s, support_y, 3)(query_x)), query_y
    ).mean()
    assert grad(queries_loss)(support_x).abs().sum() > 0
    poisoned = Attack(0.1).perturb(queries_loss, support_x)
    clean_weights = algo.inner_loop(algo.params(), support_x, support_y, 3)[-1]
    poisoned_weights = algo.inner_loop(algo.params(), poisoned, support_y, 3)[-1]
    assert any((clean_weights[k] - poisoned_weights[k]).abs().max() > 1e-6 for k in clean_weights)
    assert queries_loss(poisoned) > queries_loss(support_x)


def test_without_adaptation_a_support_attack_has_nothing_to_move():
    algo, support_x, support_y, query_x, query_y = maml_task(inner_steps=0)
    task = attacked_task(algo, Attack(0.1), "support", 3, None)
    _, _, largest = task(support_x, support_y, query_x, query_y)
    assert largest == 0


@pytest.mark.parametrize("target", ["query", "support", "both"])
def test_an_attack_lowers_the_accuracy_of_an_adapted_maml(target):
    algo, support_x, support_y, query_x, query_y = maml_task(inner_steps=2)
    task = attacked_task(algo, Attack(0.3, 5, 0.1, random_start=True), target, 3, None)
    clean, predictions, largest = task(support_x, support_y, query_x, query_y)
    torch.testing.assert_close(clean, algo.adapt(algo.params(), support_x, support_y, 3)(query_x))
    assert (
        true_class_nll(algo.probabilities(predictions), query_y).mean()
        > true_class_nll(algo.probabilities(clean), query_y).mean()
    )
    assert 0 < largest <= 0.3 + 1e-12


ATTACKED = ["trainer.iterations=2", "eval.episodes=4", "eval.batch_tasks=2"]


@pytest.mark.parametrize("algo", ["maml", "protonet"])
def test_with_epsilon_zero_robust_accuracy_equals_clean_accuracy(algo, tiny_cfg, tmp_path):
    cfg = tiny_cfg(
        f"algo={algo}", *ATTACKED, "eval.attack=pgd", "eval.epsilon=0", "eval.attack_target=both"
    )
    results = train(cfg, tmp_path)
    assert results["robust"]["accuracy"] == results["accuracy"]
    assert results["robust"]["largest_perturbation"] == 0


def test_results_stamp_the_attack_and_report_shows_robust_accuracy(tiny_cfg, tmp_path):
    cfg = tiny_cfg("algo=protonet", *ATTACKED, "eval.attack=fgsm", "eval.epsilon=0.3")
    results = train(cfg, tmp_path / "run")
    assert results["protocol"]["attack"] == {
        "kind": "fgsm",
        "target": "query",
        "epsilon": 0.3,
        "steps": 1,
        "step_size": 0.3,
        "random_start": False,
        "pixel_range": [0.0, 1.0],
        "precision": "fp32",
    }
    assert results["robust"]["accuracy"]["mean"] < results["accuracy"]["mean"]
    assert "under fgsm on the query (epsilon 0.3)" in describe(results)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["robust"] == results["robust"]
    fake_run(tmp_path / "clean", ["algo=maml"], 0.9)
    table = markdown(find_runs([tmp_path]))
    assert "| robust | robust ci95 |" in table
    assert f"{100 * results['robust']['accuracy']['mean']:.2f}" in table


def test_an_attacked_test_keeps_the_clean_accuracy_and_calibration(tiny_cfg, tmp_path):
    clean = train(tiny_cfg("algo=maml", *ATTACKED), tmp_path / "clean")
    assert clean["protocol"]["attack"] == "none" and "robust" not in clean
    attacked = train(tiny_cfg("algo=maml", *ATTACKED, "eval.attack=fgsm"), tmp_path / "attacked")
    assert attacked["accuracy"] == clean["accuracy"]
    assert attacked["calibration"] == clean["calibration"]


def test_adversarial_querying_scores_perturbed_queries_in_training_only():
    torch.manual_seed(0)
    algo = ProtoNet(Conv4((1, 8, 8), hidden=4, blocks=2), 3)
    support_x, query_x = torch.rand(3, 1, 8, 8), torch.rand(6, 1, 8, 8)
    support_y, query_y = torch.arange(3), torch.arange(3).repeat(2)
    loss = lambda: algo.task_loss(algo.params(), support_x, support_y, query_x, query_y, 3)[0]
    clean = loss()
    algo.train_attack = Attack(0.2)
    assert loss() > clean + 1e-3
    algo.eval()
    torch.testing.assert_close(loss(), clean)


def test_show_names_the_training_and_the_test_attack(make_cfg):
    shown = settings(make_cfg("experiment=adml_omniglot_5w1s", "eval.attack=pgd"))
    assert shown["train_attack"] == "fgsm, epsilon 0.1"
    assert shown["test_attack"] == "pgd-10, epsilon 0.1, on the query"


CLASSIFIERS = sorted(
    path.stem
    for path in (Path(__file__).resolve().parent.parent / "configs" / "algo").glob("*.yaml")
    if not path.stem.endswith("_rl") and path.stem not in ("neural_process",)
)


@pytest.mark.parametrize("target", ["query", "support"])
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_every_classifier_can_be_attacked_on_queries_and_support(name, target, tiny_cfg):
    cfg = tiny_cfg(f"algo={name}", "task.attack=fgsm" if name == "adml" else "task.attack=none")
    dataset = TinyImages()
    algo = build_algorithm(cfg, dataset).eval()
    episode = dataset.sampler("test", 5, 1, 2, torch.device("cpu")).build(
        dataset.sampler("test", 5, 1, 2, torch.device("cpu")).draw(1, torch.Generator())
    )
    task = attacked_task(algo, Attack(0.1), target, 5, None)
    with torch.no_grad():
        *_, largest = task(*(t[0] for t in episode.tensors))
    assert largest > 0
