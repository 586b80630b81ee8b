"""MAML-RL: the policy-gradient pieces against closed forms, the meta-gradient against an unrolled
reference, the Fisher products against the explicit Hessian, and TRPO's trust region."""

from __future__ import annotations

import math

import pytest
import torch
from hydra import compose, initialize_config_dir

from metarun.algorithms.maml_rl import MAMLRL
from metarun.algorithms.policy_gradient import (
    advantages,
    baseline_features,
    fit_linear_baseline,
    gaussian_kl,
    gaussian_log_prob,
)
from metarun.backbones.mlp import MLP
from metarun.build import CONFIG_DIR
from metarun.data.environments import Trajectories
from metarun.data.navigation import Navigation2D
from metarun.engine import Engine
from metarun.optimizers.trpo import TRPO, conjugate_gradient

TINY_NAVIGATION = [
    "experiment=maml_rl_navigation_2d",
    "backbone.hidden=[8]",
    "dataset.horizon=10",
    "task.meta_batch_size=3",
    "task.shots=4",
    "task.queries=4",
    "eval.shots=4",
]


def tiny_policy(first_order: bool = False, inner_steps: int = 1) -> MAMLRL:
    torch.manual_seed(0)
    algo = MAMLRL(
        MLP((2,), [5]),
        2,
        inner_lr=0.3,
        inner_steps=inner_steps,
        first_order=first_order,
        init_log_std=-0.5,
        policy_init="torch",  # the tiny problem these mechanics tests were written on
    )
    return algo


def tiny_tasks(tasks: int = 3, horizon: int = 6, trajectories: int = 4):
    family = Navigation2D(horizon=horizon)
    sampler = family.sampler("train", 1, trajectories, trajectories, "cpu")
    return sampler.sample(tasks, torch.Generator().manual_seed(1))


def test_policy_gradient_estimate_is_unbiased_on_a_gaussian_bandit():
    # One step, reward -(a - g)^2, a ~ N(mu, s^2): J(mu) = -((mu - g)^2 + s^2), dJ/dmu = -2(mu - g)
    torch.manual_seed(0)
    algo = MAMLRL(MLP((1,), []), 1, inner_lr=0.1, inner_steps=1, init_log_std=math.log(0.5))
    params = algo.params()
    with torch.no_grad():
        params["model.1.weight"].zero_()
        params["model.1.bias"].fill_(0.3)
    goal, n = 1.0, 400_000
    actions = 0.3 + 0.5 * torch.randn(1, n, 1, 1)
    rewards = -((actions.squeeze(-1) - goal) ** 2)
    observations, alive = torch.zeros(1, n, 1, 1), torch.ones(1, n, 1)
    loss = algo._pg_loss(params, observations[0], actions[0], rewards[0], alive[0])
    (gradient,) = torch.autograd.grad(loss, params["model.1.bias"])
    estimate, exact = -gradient.item(), -2 * (0.3 - goal)
    standard_error = (((actions - 0.3) / 0.25 * rewards.unsqueeze(-1)).std() / math.sqrt(n)).item()
    assert abs(estimate - exact) < 4 * standard_error, (estimate, exact)


def test_linear_baseline_is_the_least_squares_fit_of_each_task():
    torch.manual_seed(0)
    observations = torch.randn(2, 5, 7, 3)
    alive = torch.ones(2, 5, 7)
    alive[0, 1, 4:] = 0  # a trajectory that ended early
    trajectories = Trajectories(observations, torch.zeros(2, 5, 7, 1), torch.zeros(2, 5, 7), alive)
    targets = torch.randn(2, 5, 7)
    fitted = fit_linear_baseline(trajectories, targets, regularisation=1e-5)
    features = baseline_features(observations, alive).double()
    for task in range(2):  # Duan et al.'s ridge: least squares of [X; sqrt(1e-5) I] w = [y; 0]
        rows = alive[task].flatten().bool()
        x = features[task].reshape(-1, features.shape[-1])[rows]
        y = targets[task].flatten()[rows].double()
        size = x.shape[1]
        augmented = torch.cat([x, math.sqrt(1e-5) * torch.eye(size, dtype=x.dtype)])
        padded = torch.cat([y, torch.zeros(size, dtype=y.dtype)]).unsqueeze(-1)
        expected = x @ torch.linalg.lstsq(augmented, padded).solution
        assert torch.allclose(
            fitted[task].flatten()[rows].double(), expected.squeeze(-1), atol=1e-4
        )
    assert fitted[0, 1, 4:].abs().max() == 0


def test_advantages_with_lambda_one_are_returns_minus_the_baseline():
    torch.manual_seed(0)
    t = Trajectories(
        torch.randn(1, 6, 5, 2), torch.zeros(1, 6, 5, 2), torch.randn(1, 6, 5), torch.ones(1, 6, 5)
    )
    discount = 0.9
    powers = discount ** torch.arange(5.0)
    returns = torch.stack([(t.rewards[..., k:] * powers[: 5 - k]).sum(-1) for k in range(5)], -1)
    expected = returns - fit_linear_baseline(t, returns)
    assert torch.allclose(advantages(t, discount, 1.0, normalise=False), expected, atol=1e-5)


def test_gaussian_log_prob_and_kl_match_torch_distributions():
    mean, log_std, actions = torch.randn(4, 3), torch.randn(4, 3) * 0.3, torch.randn(4, 3)
    other_mean, other_log_std = torch.randn(4, 3), torch.randn(4, 3) * 0.3
    p = torch.distributions.Normal(mean, log_std.exp())
    q = torch.distributions.Normal(other_mean, other_log_std.exp())
    assert torch.allclose(gaussian_log_prob(mean, log_std, actions), p.log_prob(actions).sum(-1))
    kl = gaussian_kl(mean, log_std, other_mean, other_log_std)
    assert torch.allclose(kl, torch.distributions.kl_divergence(p, q).sum(-1), atol=1e-6)


def test_conjugate_gradient_solves_a_positive_definite_system():
    torch.manual_seed(0)
    a = torch.randn(6, 6, dtype=torch.float64)
    matrix, b = (
        a @ a.T + 0.5 * torch.eye(6, dtype=torch.float64),
        torch.randn(6, dtype=torch.float64),
    )
    x = conjugate_gradient(lambda v: matrix @ v, b, iterations=6)
    assert torch.allclose(x, torch.linalg.solve(matrix, b), atol=1e-8)


def _flat_kl(algo: MAMLRL, objective):
    names = [name for name, _ in algo.named_parameters()]
    shapes = [p.shape for p in algo.parameters()]

    def kl_of(flat: torch.Tensor) -> torch.Tensor:
        weights = [
            piece.view(shape)
            for piece, shape in zip(flat.split([math.prod(s) for s in shapes]), shapes)
        ]
        return objective.evaluate(weights)[1]

    return names, kl_of


@pytest.mark.parametrize("first_order", [False, True])
def test_fisher_product_equals_the_explicit_hessian_of_the_kl(first_order):
    algo = tiny_policy(first_order)
    objective = algo.objective(tiny_tasks())
    _, kl_of = _flat_kl(algo, objective)
    flat = torch.cat([p.detach().reshape(-1) for p in algo.parameters()])
    hessian = torch.autograd.functional.hessian(kl_of, flat)
    vector = torch.randn(flat.numel())
    product = objective.fisher_product()(vector)
    assert torch.allclose(product, hessian @ vector, rtol=1e-4, atol=1e-6)
    assert product.abs().max() > 1e-3


def test_trpo_step_keeps_the_kl_within_its_bound_and_lowers_the_surrogate():
    algo = tiny_policy()
    optimizer = TRPO(algo.parameters(), max_kl=0.001)
    step = Engine("loop").meta_backward(algo, tiny_tasks())
    before = [p.detach().clone() for p in algo.parameters()]
    loss_before = step.closure.evaluate(before)[0].item()
    optimizer.step(step.closure)
    with torch.no_grad():
        loss_after, kl = step.closure.evaluate()
    moved = any(not torch.equal(p, q) for p, q in zip(algo.parameters(), before))
    assert moved and kl.item() <= 0.001 and loss_after.item() < loss_before


def test_trpo_refuses_an_optimiser_step_without_an_objective():
    from metarun.errors import ConfigError

    algo = tiny_policy()
    with pytest.raises(ConfigError, match="optimizer=adam"):
        TRPO(algo.parameters()).step()


def _reference_surrogate(algo: MAMLRL, objective) -> torch.Tensor:
    """Plain autograd, one task at a time, torch.distributions for the policy."""
    losses = []
    for task in range(objective.tasks.num_tasks):
        weights = {name: p for name, p in algo.named_parameters()}
        support = objective.supports[0]
        t = support.trajectories

        def mean_of(w, observations):
            hidden = torch.relu(
                observations @ w["model.0.features.0.weight"].T + w["model.0.features.0.bias"]
            )
            return hidden @ w["model.1.weight"].T + w["model.1.bias"]

        normal = torch.distributions.Normal(
            mean_of(weights, t.observations[task]), weights["log_std"].exp()
        )
        log_prob = normal.log_prob(t.actions[task]).sum(-1)
        alive = t.alive[task]
        inner = -(log_prob * support.advantages[task] * alive).sum() / alive.sum()
        grads = torch.autograd.grad(
            inner, list(weights.values()), create_graph=not algo.first_order
        )
        adapted = {
            name: w - algo.inner_lr * (g.detach() if algo.first_order else g)
            for (name, w), g in zip(weights.items(), grads)
        }
        q = objective.queries.trajectories
        new = torch.distributions.Normal(
            mean_of(adapted, q.observations[task]), adapted["log_std"].exp()
        )
        old = torch.distributions.Normal(
            objective.old_mean[task], objective.old_log_std[task].exp()
        )
        ratio = (
            new.log_prob(q.actions[task]).sum(-1) - old.log_prob(q.actions[task]).sum(-1)
        ).exp()
        alive = q.alive[task]
        losses.append(-(ratio * objective.queries.advantages[task] * alive).sum() / alive.sum())
    return torch.stack(losses).mean()


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_equals_an_unrolled_autograd_reference(first_order):
    algo = tiny_policy(first_order)
    step = Engine("loop").meta_backward(algo, tiny_tasks())
    fast = [p.grad.clone() for p in algo.parameters()]
    algo.zero_grad()
    _reference_surrogate(algo, step.closure).backward()
    for (name, p), g in zip(algo.named_parameters(), fast):
        assert torch.allclose(g, p.grad, rtol=1e-4, atol=1e-7), name
    assert any(g.abs().max() > 0 for g in fast)


def test_second_order_terms_change_the_meta_gradient():
    grads = []
    for first_order in (False, True):
        algo = tiny_policy(first_order)
        Engine("loop").meta_backward(algo, tiny_tasks())
        grads.append(torch.cat([p.grad.reshape(-1) for p in algo.parameters()]))
    assert not torch.allclose(*grads)


def test_returns_after_each_step_use_fixed_tasks_and_noise():
    algo = tiny_policy(inner_steps=1)
    tasks = tiny_tasks()
    first, second = algo.returns_after(tasks, 3), algo.returns_after(tasks, 3)
    assert first.shape == (3, 4) and torch.equal(first, second)
    assert torch.equal(algo.returns_after(tasks, 1), first[:, :2])


def test_maml_rl_preset_learns_navigation_in_a_few_iterations(tmp_path):
    from metarun import run

    def test_return(iterations: int) -> dict:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(
                "train",
                [
                    *TINY_NAVIGATION,
                    "dataset.horizon=30",
                    "task.meta_batch_size=10",
                    f"trainer.iterations={iterations}",
                    "trainer.val_every=100",
                    "trainer.val_episodes=10",
                    "eval.episodes=20",
                    "eval.inner_steps=1",
                ],
            )
        return run.train(cfg, tmp_path / str(iterations))

    untrained, trained = test_return(0), test_return(30)
    before, after = untrained["return_after_steps"], trained["return_after_steps"]
    # After one adaptation step the trained policy beats the untrained one, and the step helps.
    assert after[1]["mean"] > before[1]["mean"] + 2 * before[1]["ci95"], (before, after)
    assert after[1]["mean"] > after[0]["mean"] + 2 * after[0]["ci95"], (before, after)
    assert trained["protocol"]["trajectories_per_step"] == 4


def test_trpo_differentiates_an_objective_it_is_handed_directly():
    algo = tiny_policy()
    objective = algo.objective(tiny_tasks())
    before = [p.detach().clone() for p in algo.parameters()]
    TRPO(algo.parameters(), max_kl=0.001).step(objective)
    assert objective.value is not None
    assert any(not torch.equal(p, q) for p, q in zip(algo.parameters(), before))
    with torch.no_grad():
        assert objective.evaluate()[1].item() <= 0.001


def test_xavier_policy_init_draws_each_layer_as_the_authors_policy():
    torch.manual_seed(0)
    algo = MAMLRL(MLP((2,), [100, 100]), 2, inner_lr=0.5, inner_steps=1, policy_init="xavier")
    layers = [m for m in algo.model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(layers) == 3 and all((layer.bias == 0).all() for layer in layers)
    for layer in layers:
        bound = (6 / sum(layer.weight.shape)) ** 0.5
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.9 * bound
