"""L-infinity attacks on a model's inputs (FGSM, PGD) and the attacked evaluation of a task.

Written with torch.func so that an attack runs inside the engine's vmap and differentiates
through an algorithm's `adapt` (poisoning the support set moves the adapted weights). Always
computed in float32, with BatchNorm's running statistics left as they were: the attacker's
trial passes are not data the model saw.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import grad

from metarun import batchnorm
from metarun.errors import ConfigError

KINDS = ("none", "fgsm", "pgd")
TARGETS = ("query", "support", "both")


@dataclass(frozen=True)
class Attack:
    """Ascent on a loss within the L-infinity ball of radius `epsilon` around the inputs,
    clipped to the valid range [low, high]. FGSM (Goodfellow et al. 2015) is one step of size
    epsilon from the clean inputs; PGD (Madry et al. 2018) takes `steps` signed-gradient steps
    from a uniformly random start and returns, per example, the iterate with the highest loss,
    so more steps never find a weaker perturbation."""

    epsilon: float
    steps: int = 1
    step_size: float | None = None  # None: epsilon
    random_start: bool = False
    low: float = 0.0
    high: float = 1.0

    def perturb(
        self, loss: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
    ) -> torch.Tensor:
        """Inputs near `x` that raise `loss`: per-example losses [N] (each example keeps its own
        best iterate) or one scalar for the whole tensor. Not differentiable (a constant)."""
        with torch.autocast(x.device.type, enabled=False), batchnorm.not_recording():
            clean = x.detach().to(torch.promote_types(x.dtype, torch.float32))
            start = clean
            if self.random_start:
                start = clean + (2 * torch.rand_like(clean) - 1) * self.epsilon
            point = self._projected(start, clean).detach()

            def ascent(z: torch.Tensor):
                losses = loss(z)
                return losses.sum(), losses.detach()

            best, best_loss = None, None
            for step in range(self.steps):
                gradient, losses = grad(ascent, has_aux=True)(point)
                if step > 0:  # `losses` are those of the previous step's iterate, `point`
                    best, best_loss = _stronger(point, losses, best, best_loss)
                point = self._projected(point + self.step * gradient.sign(), clean).detach()
            if self.steps > 1:
                point, _ = _stronger(point, loss(point).detach(), best, best_loss)
            return point.to(x.dtype)

    @property
    def step(self) -> float:
        return self.epsilon if self.step_size is None else self.step_size

    def _projected(self, point: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        inside = torch.minimum(torch.maximum(point, clean - self.epsilon), clean + self.epsilon)
        return inside.clamp(self.low, self.high)

    def describe(self) -> dict:
        return {
            "epsilon": self.epsilon,
            "steps": self.steps,
            "step_size": self.step,
            "random_start": self.random_start,
            "pixel_range": [self.low, self.high],
            "precision": "fp32",
        }


def _stronger(point, losses, best, best_loss):
    """Per example (or for the whole tensor, if `losses` is a scalar), the iterate with the
    higher loss; the first iterate when there is no best yet."""
    if best_loss is None:
        return point, losses
    better = (losses > best_loss).view(*losses.shape, *[1] * (point.dim() - losses.dim()))
    return torch.where(better, point, best), torch.maximum(losses, best_loss)


def pixel_range(dataset, key: str) -> tuple[float, float]:
    """The dataset's valid input range, which attacks clip to; a clear error where it has none."""
    if getattr(dataset, "pixel_range", None) is None:  # image classification datasets set one
        raise ConfigError(
            f"{key} perturbs a classifier's images within their pixel range, and dataset "
            f"{type(dataset).__name__} is not image classification (no pixel range: a "
            f"regression or environment dataset). Set {key}=none, or use an image "
            "classification dataset such as dataset=omniglot."
        )
    return dataset.pixel_range


def make_attack(
    kind: str,
    epsilon: float,
    steps: int,
    step_size: float | None,
    pixel_range: tuple[float, float],
    prefix: str,
) -> Attack | None:
    """The attack the settings `<prefix>.attack` (one of KINDS, checked with the other choices
    by build.check_settings), `.epsilon`, `.attack_steps` and `.attack_step_size` describe (None
    for `none`); PGD's step size defaults to Madry et al.'s 2.5 epsilon / steps."""
    if kind == "none":
        return None
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or epsilon < 0:
        raise ConfigError(
            f"{prefix}.epsilon={epsilon!r} is not allowed: it is the L-infinity radius of the "
            f"perturbation in pixel units and must be a number >= 0 (e.g. {prefix}.epsilon=0.1 "
            f"for pixels in [0, 1])."
        )
    low, high = pixel_range
    if kind == "fgsm":
        return Attack(float(epsilon), low=low, high=high)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(
            f"{prefix}.attack_steps={steps!r} is not allowed with {prefix}.attack=pgd: PGD takes "
            f"one gradient step or more. Set {prefix}.attack_steps to a whole number >= 1 "
            f"(PGD-10: 10), or use {prefix}.attack=fgsm for a single step."
        )
    if step_size is not None and (
        isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or step_size <= 0
    ):
        raise ConfigError(
            f"{prefix}.attack_step_size={step_size!r} is not allowed: PGD's step must be a "
            f"number > 0. Set it, or null for 2.5 x epsilon / attack_steps."
        )
    if step_size is None:
        step_size = 2.5 * epsilon / steps
    return Attack(float(epsilon), steps, float(step_size), random_start=True, low=low, high=high)


def true_class_nll(probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-log p(true class) per query, from a predictive distribution [Q, ways]: the loss an
    attack raises, whatever the algorithm's outputs stand for."""
    chosen = probabilities.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return -chosen.clamp_min(torch.finfo(chosen.dtype).tiny).log()


def nll_of(algo, predict: Callable[[torch.Tensor], torch.Tensor], labels: torch.Tensor):
    """x -> each example's `true_class_nll` under `algo`'s predictive distribution of
    predict(x): the per-example loss every attack here raises."""
    return lambda x: true_class_nll(algo.probabilities(predict(x)), labels)


def attacked_task(algo, attack: Attack, target: str, ways: int, steps: int | None):
    """fn(support_x, support_y, query_x, query_y) -> (clean query predictions, query predictions
    under the attack, largest perturbation applied). A support attack maximises the queries'
    loss through the adaptation on the perturbed support set; a query attack perturbs each
    query against the predictor adapted on the clean (or, for `both`, the poisoned) support set."""
    adapted = lambda support_x, support_y: algo.adapt(
        algo.params(), support_x, support_y, ways, steps
    )

    def task(support_x, support_y, query_x, query_y):
        clean = adapted(support_x, support_y)
        predict, poisoned, attacked = clean, support_x, query_x
        if target in ("support", "both"):
            queries_loss = lambda s: nll_of(algo, adapted(s, support_y), query_y)(query_x).mean()
            poisoned = attack.perturb(queries_loss, support_x)
            predict = adapted(poisoned, support_y)
        if target in ("query", "both"):
            attacked = attack.perturb(nll_of(algo, predict, query_y), query_x)
        largest = torch.maximum(
            (poisoned - support_x).abs().amax(), (attacked - query_x).abs().amax()
        )
        return clean(query_x), predict(attacked), largest

    return task
