"""iMAML's implicit meta-gradient on a quadratic inner problem with a known solution."""

from __future__ import annotations

import torch
from torch.func import functional_call

from metarun.algorithms.imaml import IMAML
from metarun.backbones.mlp import MLP
from metarun.engine import Engine
from metarun.episode import Episode


def test_implicit_meta_gradient_equals_the_exact_one_on_a_quadratic_problem():
    """Linear regression with MSE: the proximal solution
    phi*(theta) = (H + lam I)^-1 (lam theta - b) is known in closed form, so
    d L_query(phi*(theta)) / d theta can be computed exactly."""
    torch.manual_seed(0)
    lam = 2.0
    algo = IMAML(
        MLP((3,), hidden=[]), 1, inner_lr=0.05, inner_steps=2000, lam=lam, cg_steps=4
    ).double()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 8, 3, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64) + 0.3
    batch = Episode(x[:, :4], y[:, :4], x[:, 4:], y[:, 4:], 1)
    Engine("loop").meta_backward(algo, batch)
    actual = torch.cat([p.grad.flatten() for p in algo.parameters()])

    names = [name for name, _ in algo.named_parameters()]
    shapes = [p.shape for p in algo.parameters()]
    theta = torch.cat([p.detach().flatten() for p in algo.parameters()]).requires_grad_()

    def loss_at(vector, inputs, targets):
        params = dict(zip(names, vector.split([s.numel() for s in shapes])))
        params = {n: v.view(s) for (n, v), s in zip(params.items(), shapes)}
        return torch.nn.functional.mse_loss(functional_call(algo, params, (inputs,)), targets)

    total = 0
    for t in range(2):
        zero = torch.zeros_like(theta)
        hessian = torch.autograd.functional.hessian(lambda v: loss_at(v, x[t, :4], y[t, :4]), zero)
        linear = torch.autograd.functional.jacobian(lambda v: loss_at(v, x[t, :4], y[t, :4]), zero)
        phi_star = torch.linalg.solve(
            hessian + lam * torch.eye(len(theta), dtype=theta.dtype), lam * theta - linear
        )
        total = total + loss_at(phi_star, x[t, 4:], y[t, 4:]) / 2
    expected = torch.autograd.grad(total, theta)[0]
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-8)


def test_meta_gradient_is_not_the_first_order_approximation():
    """With a strong support curvature the implicit correction (I + H/lam)^-1 matters."""
    torch.manual_seed(0)
    algo = IMAML(
        MLP((3,), hidden=[4]), 1, inner_lr=0.05, inner_steps=20, lam=1.0, cg_steps=5
    ).double()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 8, 3, generator=g, dtype=torch.float64)
    batch = Episode(
        x[:, :4], x[:, :4].sum(-1, keepdim=True), x[:, 4:], x[:, 4:].sum(-1, keepdim=True), 1
    )
    Engine("loop").meta_backward(algo, batch)
    implicit = torch.cat([p.grad.flatten() for p in algo.parameters()])
    phi = algo.fit(algo.params(), batch.support_x[0], batch.support_y[0], ways=1)
    query = torch.nn.functional.mse_loss(
        algo.run({n: v.requires_grad_() for n, v in phi.items()}, batch.query_x[0]),
        batch.query_y[0],
    )
    first_order = torch.cat([g.flatten() for g in torch.autograd.grad(query, list(phi.values()))])
    assert (implicit - first_order).norm() > 0.05 * first_order.norm()


def graph_size(tensor: torch.Tensor) -> int:
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return len(seen)


def test_graph_kept_for_the_meta_gradient_does_not_grow_with_inner_steps():
    torch.manual_seed(0)
    algo = IMAML(MLP((3,), hidden=[4]), 1, inner_lr=0.05, inner_steps=1).double()
    x = torch.randn(8, 3, dtype=torch.float64)
    sizes = [
        graph_size(
            algo.task_loss(algo.params(), x[:4], x[:4, :1], x[4:], x[4:, :1], ways=1, steps=steps)[
                0
            ]
        )
        for steps in (1, 30)
    ]
    assert sizes[0] == sizes[1], sizes


def test_released_codes_cg_system_is_damped_as_written_there():
    """(1 + cg_damping) x + H x / (lam + lam_damping) = g, solved exactly by enough CG steps."""
    torch.manual_seed(0)
    damped = {"cg_damping": 1.0, "lam_damping": 10.0}
    algo = IMAML(
        MLP((3,), hidden=[]), 1, inner_lr=0.1, inner_steps=0, lam=1.0, cg_steps=4, **damped
    ).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    y = torch.randn(6, 1, dtype=torch.float64)
    fast = algo.params()
    g = {name: torch.randn_like(value) for name, value in fast.items()}
    solution = algo.implicit_gradient(fast, x, y, g)
    features = torch.cat([x, torch.ones(6, 1, dtype=torch.float64)], 1)  # weight, then bias
    hessian = 2 * features.T @ features / 6  # of the MSE of a linear model
    system = 2 * torch.eye(4, dtype=torch.float64) + hessian / 11
    flat = lambda p: torch.cat([p["model.1.weight"].flatten(), p["model.1.bias"]])
    torch.testing.assert_close(flat(solution), torch.linalg.solve(system, flat(g)))


def test_pull_back_takes_plain_steps_then_one_proximal_step():
    torch.manual_seed(0)
    algo = IMAML(MLP((3,), hidden=[]), 1, inner_lr=0.1, inner_steps=3, lam=1.5)
    algo.proximal = "pull_back"
    algo = algo.double()
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 1, dtype=torch.float64)
    theta = {name: value.detach() for name, value in algo.params().items()}
    fast = dict(theta)
    for _ in range(3):
        fast = {n: v.detach().requires_grad_() for n, v in fast.items()}
        loss = torch.nn.functional.mse_loss(algo.run(fast, x), y)
        grads = torch.autograd.grad(loss, list(fast.values()))
        fast = {n: (v - 0.1 * g).detach() for (n, v), g in zip(fast.items(), grads)}
    expected = {n: v - 0.1 * 1.5 * (v - theta[n]) for n, v in fast.items()}
    actual = algo.fit(algo.params(), x, y, ways=1)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name])


def proximal_value(algo, weights, theta, x, y):
    distance = sum(((weights[n] - theta[n]) ** 2).sum() for n in weights)
    return torch.nn.functional.mse_loss(algo.run(weights, x), y) + algo.lam / 2 * distance


def test_one_newton_step_solves_a_quadratic_proximal_problem():
    """Linear regression: the proximal problem is quadratic, so one Newton step whose CG runs as
    many steps as there are weights lands on the closed-form minimiser."""
    torch.manual_seed(0)
    algo = IMAML(
        MLP((3,), hidden=[]),
        1,
        inner_lr=0.05,
        inner_steps=1,
        lam=2.0,
        inner_solver="hessian_free",
        newton_cg_steps=4,
    ).double()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    y = torch.randn(6, 1, generator=g, dtype=torch.float64)
    theta = {name: value.detach() for name, value in algo.params().items()}
    inputs = torch.cat([x, torch.ones(6, 1, dtype=torch.float64)], dim=1)  # weight, then bias
    start = torch.cat([theta["model.1.weight"].flatten(), theta["model.1.bias"]])
    system = 2 / 6 * inputs.T @ inputs + 2.0 * torch.eye(4, dtype=torch.float64)
    minimiser = torch.linalg.solve(system, 2 / 6 * inputs.T @ y[:, 0] + 2.0 * start)
    actual = algo.fit(algo.params(), x, y, ways=1)
    flat = torch.cat([actual["model.1.weight"].flatten(), actual["model.1.bias"]])
    torch.testing.assert_close(flat, minimiser, rtol=1e-9, atol=1e-10)


def test_newton_steps_reach_the_minimiser_gradient_descent_converges_to():
    torch.manual_seed(0)
    settings = dict(inner_lr=0.02, lam=2.0)
    newton = IMAML(
        MLP((3,), hidden=[6]),
        1,
        inner_steps=40,
        inner_solver="hessian_free",
        newton_cg_steps=30,
        **settings,
    ).double()
    descent = IMAML(MLP((3,), hidden=[6]), 1, inner_steps=5000, **settings).double()
    descent.load_state_dict(newton.state_dict())
    g = torch.Generator().manual_seed(4)
    x = torch.randn(8, 3, generator=g, dtype=torch.float64)
    y = torch.sin(x.sum(1, keepdim=True))
    theta = {name: value.detach() for name, value in newton.params().items()}
    by_newton = newton.fit(newton.params(), x, y, ways=1)
    by_descent = descent.fit(descent.params(), x, y, ways=1)
    for name in theta:
        torch.testing.assert_close(by_newton[name], by_descent[name], rtol=1e-6, atol=1e-7)
    assert proximal_value(newton, by_newton, theta, x, y) < proximal_value(
        newton, theta, theta, x, y
    )


def test_hessian_free_tasks_vmap_as_they_loop():
    torch.manual_seed(0)
    algo = IMAML(
        MLP((3,), hidden=[4]), 1, inner_lr=0.05, inner_steps=3, inner_solver="hessian_free"
    ).double()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 8, 3, generator=g, dtype=torch.float64)
    batch = Episode(x[:, :4], x[:, :4].sum(-1, keepdim=True), x[:, 4:], x[:, 4:, :1], 1)
    gradients = []
    for mode in ("loop", "vmap"):
        algo.zero_grad()
        Engine(mode).meta_backward(algo, batch)
        gradients.append([p.grad.clone() for p in algo.parameters()])
    for looped, vmapped in zip(*gradients, strict=True):
        torch.testing.assert_close(looped, vmapped)
