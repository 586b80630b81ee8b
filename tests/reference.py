"""Slow, obviously correct references: one task at a time with torch.autograd.grad."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call

from metarun.engine import Engine


def loss_fn(prediction, target):
    return (
        F.mse_loss(prediction, target)
        if target.dtype.is_floating_point
        else F.cross_entropy(prediction, target)
    )


def maml_meta_gradient(
    algo, batch, inner_lr: float, steps: int, first_order: bool, adapts=lambda name: True
) -> dict:
    """d/d(theta) of the mean query loss after `steps` plain SGD steps on each task's support,
    adapting the parameters whose names `adapts` accepts."""
    params = {name: p.detach().clone().requires_grad_(True) for name, p in algo.named_parameters()}
    total = 0.0
    for index in range(batch.num_tasks):
        fast = params
        for _ in range(steps):
            support = loss_fn(
                functional_call(algo, fast, (batch.support_x[index],)), batch.support_y[index]
            )
            grads = torch.autograd.grad(
                support, list(fast.values()), create_graph=not first_order, allow_unused=True
            )
            fast = {
                name: value - inner_lr * g if adapts(name) and g is not None else value
                for (name, value), g in zip(fast.items(), grads)
            }
        total = total + loss_fn(
            functional_call(algo, fast, (batch.query_x[index],)), batch.query_y[index]
        )
    meta = torch.autograd.grad(total / batch.num_tasks, list(params.values()), allow_unused=True)
    return {
        name: torch.zeros_like(p) if g is None else g for (name, p), g in zip(params.items(), meta)
    }


def assert_engines_agree(algo, batch, modes=("loop", "vmap")) -> None:
    """Every engine mode accumulates the same meta-gradient for this algorithm and batch."""
    grads = []
    for mode in modes:
        algo.zero_grad()
        Engine(mode).meta_backward(algo, batch)
        grads.append([p.grad.clone() for p in algo.parameters()])
    for first, other in zip(grads[0], grads[1]):
        torch.testing.assert_close(first, other)
