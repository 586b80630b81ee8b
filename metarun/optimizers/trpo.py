"""TRPO as an outer optimiser (Schulman et al. 2015, arXiv:1502.05477): the natural-gradient
step that decreases a surrogate loss with the mean KL between the old and new policies held
under `max_kl`. The direction solves F x = -g by conjugate gradient, with Fisher-vector
products as Hessian-vector products of the KL (its first-derivative graph is built once per
step and reused by every product); a backtracking line search then shrinks the step until the
surrogate improves within the bound, or rejects it.

The trainer calls it like any optimiser, `optimizer.step(closure)`: the closure is the
algorithm's objective, which besides the torch closure convention has
`evaluate(weights) -> (surrogate, kl)` at any candidate weights, `value` (the surrogate whose
gradient is in .grad, set by its `backward()`) and `fisher_product()`
(metarun.algorithms.policy_gradient.MetaObjective).
A PPO or ProMP outer step is another optimiser reading the same objective.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.autograd.profiler import record_function

from metarun.errors import ConfigError


def conjugate_gradient(
    product: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    iterations: int,
    tolerance: float = 1e-10,
) -> torch.Tensor:
    """Approximately solves A x = b for symmetric positive definite A given as x -> A x."""
    x, residual = torch.zeros_like(b), b.clone()
    direction, norm = residual.clone(), residual @ residual
    for _ in range(iterations):
        if norm < tolerance:
            break
        a_direction = product(direction)
        alpha = norm / (direction @ a_direction)
        x += alpha * direction
        residual -= alpha * a_direction
        new_norm = residual @ residual
        direction = residual + new_norm / norm * direction
        norm = new_norm
    return x


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


class TRPO(torch.optim.Optimizer):
    def __init__(
        self,
        params,
        max_kl: float = 0.01,
        cg_iterations: int = 10,
        cg_damping: float = 1e-5,
        line_search_steps: int = 15,
        backtrack_ratio: float = 0.8,
    ) -> None:
        if max_kl <= 0 or cg_iterations < 1 or cg_damping < 0 or line_search_steps < 1:
            raise ConfigError(
                f"optimizer.max_kl={max_kl}, optimizer.cg_iterations={cg_iterations}, "
                f"optimizer.cg_damping={cg_damping} and optimizer.line_search_steps="
                f"{line_search_steps} cannot work: max_kl must be > 0, the counts >= 1 and the "
                "damping >= 0 (paper: 0.01, 10, 1e-5, 15)."
            )
        if not 0 < backtrack_ratio < 1:
            raise ConfigError(
                f"optimizer.backtrack_ratio={backtrack_ratio} must lie strictly between 0 and 1."
            )
        defaults = dict(
            max_kl=max_kl,
            cg_iterations=cg_iterations,
            cg_damping=cg_damping,
            line_search_steps=line_search_steps,
            backtrack_ratio=backtrack_ratio,
        )
        super().__init__(params, defaults)

    def step(self, closure=None) -> torch.Tensor:  # type: ignore[override]  # a closure required
        """One trust-region step from the gradients in .grad; `closure` is the objective."""
        if not hasattr(closure, "evaluate"):
            raise ConfigError(
                "optimizer=trpo needs a surrogate and KL to constrain, which only policy "
                "algorithms on environment tasks give (e.g. algo=maml_rl "
                "dataset=navigation_2d). Use optimizer=adam or optimizer=sgd for this algorithm."
            )
        settings = self.param_groups[0]
        params = [p for group in self.param_groups for p in group["params"]]
        if closure.value is None:  # not yet differentiated (called outside the trainer)
            with torch.enable_grad():
                closure()
        loss_before = closure.value
        gradient = _flat([p.grad if p.grad is not None else torch.zeros_like(p) for p in params])
        with torch.enable_grad(), record_function("trpo.conjugate_gradient"):
            kl_hessian = closure.fisher_product()

            def fisher_product(vector: torch.Tensor) -> torch.Tensor:
                return kl_hessian(vector).detach() + settings["cg_damping"] * vector

            direction = conjugate_gradient(fisher_product, -gradient, settings["cg_iterations"])
            curvature = 0.5 * direction @ fisher_product(direction)
        full_step = direction * torch.sqrt(settings["max_kl"] / curvature.clamp_min(1e-12))
        with torch.no_grad(), record_function("trpo.line_search"):
            self._line_search(params, full_step, loss_before.detach(), closure, settings)
        return loss_before.detach()

    def _line_search(self, params, full_step, loss_before, closure, settings) -> None:
        start = _flat([p.detach() for p in params]).clone()
        for k in range(settings["line_search_steps"]):
            self._assign(params, start + settings["backtrack_ratio"] ** k * full_step)
            loss, kl = closure.evaluate()
            if loss < loss_before and kl <= settings["max_kl"]:
                return
        self._assign(params, start)  # no step improved within the bound: stay

    @staticmethod
    def _assign(params, flat: torch.Tensor) -> None:
        offset = 0
        for p in params:
            p.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
