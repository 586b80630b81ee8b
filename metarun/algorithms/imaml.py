"""iMAML (Rajeswaran, Finn, Kakade, Levine 2019, arXiv:1909.04630): each task solves the
proximal problem phi = argmin L_support(phi) + lam/2 ||phi - theta||^2 (here by
`inner_steps` of gradient descent, the paper's iMAML-GD), and the meta-gradient is
implicit, (I + H/lam)^-1 grad L_query(phi) with H the support Hessian at phi, solved by
`cg_steps` of conjugate gradient on Hessian-vector products. No graph through the
inner steps is kept, so memory does not grow with their number.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import grad

from metarun.algorithms.base import Algorithm, Predictor
from metarun.algorithms.functional import Params, inner_gradient, loss_with_gradient, sgd_step
from metarun.errors import ConfigError
from metarun.metrics import task_loss_and_score


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
    ) -> None:
        super().__init__()
        if inner_lr <= 0 or inner_steps < 0 or lam <= 0 or cg_steps < 1:
            raise ConfigError(
                f"algo.inner_lr and algo.lam must be > 0, algo.inner_steps >= 0 and "
                f"algo.cg_steps >= 1 (got {inner_lr}, {lam}, {inner_steps}, {cg_steps})."
            )
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
        """Gradient descent on the proximal problem from theta; returns phi (no graph)."""
        self.check_ways(support_y, ways)
        anchor = {name: value.detach() for name, value in params.items()}
        fast = dict(anchor)
        for _ in range(self.inner_steps if steps is None else steps):
            grads = inner_gradient(self._support_loss, fast, support_x, support_y)
            proximal = {name: grads[name] + self.lam * (fast[name] - anchor[name]) for name in fast}
            fast = sgd_step(fast, proximal, self.inner_lr)
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
        """Solves (I + H/lam) x = query_gradient by conjugate gradient, H at phi = fast."""
        support_gradient = lambda weights: grad(self._support_loss)(weights, support_x, support_y)
        hessian_times = lambda v: grad(lambda w: _dot(support_gradient(w), v))(fast)
        apply = lambda v: {name: v[name] + hv / self.lam for name, hv in hessian_times(v).items()}
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
