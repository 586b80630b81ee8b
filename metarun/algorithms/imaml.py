"""iMAML (Rajeswaran, Finn, Kakade, Levine 2019, arXiv:1909.04630): each task solves the
proximal problem phi = argmin L_support(phi) + lam/2 ||phi - theta||^2 (here by
`inner_steps` of gradient descent, the paper's iMAML-GD), and the meta-gradient is
implicit, (I + H/lam)^-1 grad L_query(phi) with H the support Hessian at phi, solved by
`cg_steps` of conjugate gradient on Hessian-vector products. No graph through the
inner steps is kept, so memory does not grow with their number.

The authors' released code (aravindr93/imaml_dev, `examples/omniglot_implicit_maml.py`) differs
from the paper's text, and is offered: `proximal=pull_back` takes the inner steps on the support
loss alone, then one step of the same size on lam/2 ||phi - theta||^2 (the text: the proximal
term in every step); `cg_damping` and `lam_damping` make the conjugate-gradient system
((1 + cg_damping) I + H / (lam + lam_damping)) x = g (the code: 1 and 10; the text: 0 and 0).
Its defaults: inner rate 0.01, 16 steps, lam 1, 5 CG steps, 16 tasks per update, Adam 0.01
(experiment=imaml_omniglot_5w1s_released). The released code has the gradient-descent solver
only ('sqp' is a TODO there).

`inner_solver=hessian_free` is the paper's iMAML-HF as its text describes it (5 CG steps for the
search direction, a line search for its size); the text gives no more, so the rest is Martens'
Hessian-free optimisation (2010) and the textbook line search: each of `inner_steps` Newton
steps solves (G + lam I) d = -grad by `newton_cg_steps` of conjugate gradient, G the support
loss's Gauss-Newton matrix (positive semi-definite: on Conv-4 the Hessian's negative curvature
stopped CG within two steps), and moves by the first of 1, 1/2, ..., 1/512 with Armijo's
sufficient decrease (c = 1e-4), else the smallest, every candidate evaluated at once so that
tasks still vmap.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from torch.func import grad, jvp, vjp

from metarun.algorithms.base import Algorithm, Predictor
from metarun.algorithms.functional import Params, inner_gradient, loss_with_gradient, sgd_step
from metarun.backbones import Backbone
from metarun.errors import ConfigError
from metarun.metrics import task_loss_and_score

PROXIMAL = ("every_step", "pull_back")
SOLVERS = ("gd", "hessian_free")
LINE_SEARCH = [0.5**k for k in range(10)]  # candidate Newton step sizes, largest first
ARMIJO = 1e-4


def _dot(a: Params, b: Params) -> torch.Tensor:
    return cast(torch.Tensor, sum((a[name] * b[name]).sum() for name in a))


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, and 0 where CG has already converged (0 / 0)."""
    return torch.where(denominator == 0, torch.zeros_like(numerator), numerator / denominator)


def _moved(weights: Params, direction: Params, size: torch.Tensor | float) -> Params:
    return {name: weights[name] + size * direction[name] for name in weights}


def _conjugate_gradient(apply, target: Params, steps: int, truncated: bool = False) -> Params:
    """`steps` of conjugate gradient on apply(x) = target from x = 0. `truncated` (Newton-CG):
    stop at the first direction of non-positive curvature, and return `target` itself (steepest
    descent) if that is the first. Without branching on values, so that it vmaps."""
    solution = {name: torch.zeros_like(t) for name, t in target.items()}
    residual, direction = dict(target), dict(target)
    residual_norm = _dot(residual, residual)
    going = torch.ones((), dtype=torch.bool, device=residual_norm.device)
    for _ in range(steps):
        applied = apply(direction)
        curvature = _dot(direction, applied)
        if truncated:
            going = going & (curvature > 0)
        step = torch.where(going, _ratio(residual_norm, curvature), 0.0)
        solution = {name: solution[name] + step * direction[name] for name in solution}
        residual = {name: residual[name] - step * applied[name] for name in residual}
        new_norm = _dot(residual, residual)
        direction = {
            name: residual[name] + _ratio(new_norm, residual_norm) * direction[name]
            for name in direction
        }
        residual_norm = torch.where(going, new_norm, residual_norm)
    if truncated:
        moved = _dot(solution, solution) > 0
        solution = {name: torch.where(moved, solution[name], target[name]) for name in solution}
    return solution


class IMAML(Algorithm):
    def __init__(
        self,
        backbone: Backbone,
        out_features: int,
        *,
        inner_lr: float,
        inner_steps: int,
        lam: float = 2.0,
        cg_steps: int = 5,
        proximal: str = "every_step",
        cg_damping: float = 0.0,
        lam_damping: float = 0.0,
        inner_solver: str = "gd",
        newton_cg_steps: int = 5,
    ) -> None:
        super().__init__()
        if inner_lr <= 0 or inner_steps < 0 or lam <= 0 or cg_steps < 1:
            raise ConfigError(
                f"algo.inner_lr and algo.lam must be > 0, algo.inner_steps >= 0 and "
                f"algo.cg_steps >= 1 (got {inner_lr}, {lam}, {inner_steps}, {cg_steps})."
            )
        if proximal not in PROXIMAL or cg_damping < 0 or lam_damping < 0:
            raise ConfigError(
                f"algo.proximal={proximal!r} must be every_step (the paper's text) or pull_back "
                f"(the released code), and algo.cg_damping={cg_damping} and "
                f"algo.lam_damping={lam_damping} at least 0."
            )
        if inner_solver not in SOLVERS or newton_cg_steps < 1:
            raise ConfigError(
                f"algo.inner_solver={inner_solver!r} must be gd (gradient descent) or "
                f"hessian_free (the paper's Newton-CG), and algo.newton_cg_steps={newton_cg_steps} "
                "at least 1."
            )
        if inner_solver == "hessian_free" and proximal != "every_step":
            raise ConfigError(
                "algo.inner_solver=hessian_free solves the proximal problem itself, so "
                f"algo.proximal={proximal!r} does not apply. Use algo.proximal=every_step."
            )
        self.inner_solver, self.newton_cg_steps = inner_solver, newton_cg_steps
        self.proximal, self.cg_damping, self.lam_damping = proximal, cg_damping, lam_damping
        self.model = nn.Sequential(backbone, nn.Linear(backbone.out_features, out_features))
        self.out_features = out_features
        self.inner_lr, self.inner_steps, self.lam, self.cg_steps = (
            inner_lr,
            inner_steps,
            lam,
            cg_steps,
        )

    def _support_loss(self, fast: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return task_loss_and_score(self.run(fast, x), y)[0]

    def fit(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        ways: int,
        steps: int | None = None,
    ) -> Params:
        """Gradient descent on the proximal problem from theta (or, with pull_back, on the
        support loss and then one step on the proximal term); returns phi (no graph)."""
        self.check_ways(support_y, ways)
        anchor = {name: value.detach() for name, value in params.items()}
        steps = self.inner_steps if steps is None else steps
        if self.inner_solver == "hessian_free":
            return self._newton_cg(anchor, support_x, support_y, steps)
        fast = dict(anchor)
        pull = lambda weights: {n: self.lam * (weights[n] - anchor[n]) for n in weights}
        for _ in range(steps):
            grads = inner_gradient(self._support_loss, fast, support_x, support_y)
            if self.proximal == "every_step":
                grads = {name: grads[name] + term for name, term in pull(fast).items()}
            fast = sgd_step(fast, grads, self.inner_lr)
        if self.proximal == "pull_back":
            fast = sgd_step(fast, pull(fast), self.inner_lr)
        return fast

    def _newton_cg(
        self, anchor: Params, support_x: torch.Tensor, support_y: torch.Tensor, steps: int
    ) -> Params:
        """`steps` Newton-CG steps with line search on the proximal problem from theta."""

        def proximal(weights: Params) -> torch.Tensor:
            distance = sum(((weights[n] - anchor[n]) ** 2).sum() for n in weights)
            return self._support_loss(weights, support_x, support_y) + self.lam / 2 * distance

        fast = dict(anchor)
        for _ in range(steps):
            gradient = grad(proximal)(fast)
            curvature = self._gauss_newton(fast, support_x, support_y)
            descent = {name: -g for name, g in gradient.items()}
            direction = _conjugate_gradient(curvature, descent, self.newton_cg_steps, True)
            slope = _dot(gradient, direction)
            start = proximal(fast).detach()
            values = torch.stack([proximal(_moved(fast, direction, size)) for size in LINE_SEARCH])
            sizes = torch.tensor(LINE_SEARCH, dtype=start.dtype, device=start.device)
            decreases = values <= start + ARMIJO * sizes * slope
            first = torch.where(decreases.any(), decreases.int().argmax(), len(LINE_SEARCH) - 1)
            fast = {name: v.detach() for name, v in _moved(fast, direction, sizes[first]).items()}
        return fast

    def _gauss_newton(self, fast: Params, support_x: torch.Tensor, support_y: torch.Tensor):
        """v -> (G + lam I) v, G = J^T H_out J the Gauss-Newton matrix of the support loss at
        `fast` (J: the outputs' Jacobian, H_out: the loss's Hessian in the outputs): positive
        semi-definite, as Martens' Hessian-free optimisation uses, so CG runs its full course."""
        outputs = lambda weights: self.run(weights, support_x)
        loss_of = lambda out: task_loss_and_score(out, support_y)[0]
        out, pull_back = vjp(outputs, fast)[:2]

        def apply(v: Params) -> Params:
            pushed = jvp(outputs, (fast,), (v,))[1]
            curved = grad(lambda o: (grad(loss_of)(o) * pushed).sum())(out)
            return {name: g + self.lam * v[name] for name, g in pull_back(curved)[0].items()}

        return apply

    def adapt(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        ways: int,
        steps: int | None = None,
    ) -> Predictor:
        fast = self.fit(params, support_x, support_y, ways, steps)
        return self.predictor(fast, support_x)

    def implicit_gradient(
        self, fast: Params, support_x: torch.Tensor, support_y: torch.Tensor, query_gradient: Params
    ) -> Params:
        """Solves ((1 + cg_damping) I + H / (lam + lam_damping)) x = query_gradient by conjugate
        gradient, H at phi = fast (the paper: (I + H/lam) x = query_gradient)."""
        support_gradient = lambda weights: grad(self._support_loss)(weights, support_x, support_y)
        hessian_times = lambda v: grad(lambda w: _dot(support_gradient(w), v))(fast)
        scale, lam = 1 + self.cg_damping, self.lam + self.lam_damping
        apply = lambda v: {n: scale * v[n] + hv / lam for n, hv in hessian_times(v).items()}
        return _conjugate_gradient(apply, query_gradient, self.cg_steps)

    def task_loss(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        query_x: torch.Tensor,
        query_y: torch.Tensor,
        ways: int,
        steps: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Query loss and score of phi, carrying the implicit meta-gradient."""
        fast = self.fit(params, support_x, support_y, ways, steps)

        def query_loss(weights: Params):
            loss, score = task_loss_and_score(self.predictor(weights, support_x)(query_x), query_y)
            return loss, (loss.detach(), score)

        query_gradient, (loss, score) = grad(query_loss, has_aux=True)(fast)
        gradient = self.implicit_gradient(fast, support_x, support_y, query_gradient)
        return loss_with_gradient(loss, params, gradient), score
