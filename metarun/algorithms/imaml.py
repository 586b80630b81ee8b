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
only ('sqp' is a TODO there); the paper's Hessian-free solver (iMAML-HF) is not implemented here.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import grad

from metarun.algorithms.base import Algorithm, Predictor
from metarun.algorithms.functional import Params, inner_gradient, loss_with_gradient, sgd_step
from metarun.errors import ConfigError
from metarun.metrics import task_loss_and_score

PROXIMAL = ("every_step", "pull_back")


def _dot(a: Params, b: Params) -> torch.Tensor:
    return sum((a[name] * b[name]).sum() for name in a)


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, and 0 where CG has already converged (0 / 0)."""
    return torch.where(denominator == 0, torch.zeros_like(numerator), numerator / denominator)


class IMAML(Algorithm):
    def __init__(
        self,
        backbone: nn.Module,
        out_features: int,
        *,
        inner_lr: float,
        inner_steps: int,
        lam: float = 2.0,
        cg_steps: int = 5,
        proximal: str = "every_step",
        cg_damping: float = 0.0,
        lam_damping: float = 0.0,
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
        fast = dict(anchor)
        pull = lambda weights: {n: self.lam * (weights[n] - anchor[n]) for n in weights}
        for _ in range(self.inner_steps if steps is None else steps):
            grads = inner_gradient(self._support_loss, fast, support_x, support_y)
            if self.proximal == "every_step":
                grads = {name: grads[name] + term for name, term in pull(fast).items()}
            fast = sgd_step(fast, grads, self.inner_lr)
        if self.proximal == "pull_back":
            fast = sgd_step(fast, pull(fast), self.inner_lr)
        return fast

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
        solution = {name: torch.zeros_like(g) for name, g in query_gradient.items()}
        residual, direction = dict(query_gradient), dict(query_gradient)
        residual_norm = _dot(residual, residual)
        for _ in range(self.cg_steps):
            applied = apply(direction)
            step = _ratio(residual_norm, _dot(direction, applied))
            solution = {name: solution[name] + step * direction[name] for name in solution}
            residual = {name: residual[name] - step * applied[name] for name in residual}
            new_norm = _dot(residual, residual)
            direction = {
                name: residual[name] + _ratio(new_norm, residual_norm) * direction[name]
                for name in direction
            }
            residual_norm = new_norm
        return solution

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
