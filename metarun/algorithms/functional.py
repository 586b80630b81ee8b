"""Functional pieces several algorithms share: parameter dicts in, tensors or dicts out.

Written functionally (no module state, no in-place updates) so every algorithm that uses
them can be looped or vmapped over tasks and differentiated through by torch.func.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.func import grad

Params = dict[str, torch.Tensor]


def params_under(params: Params, prefix: str) -> Params:
    """The entries of one submodule (`prefix` = its name plus "."), named as inside it."""
    return {name[len(prefix) :]: value for name, value in params.items() if name.startswith(prefix)}


def class_means(embeddings: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Mean embedding of each class 0..ways-1: [ways, D] (ProtoNet's prototypes)."""
    member = torch.nn.functional.one_hot(labels, ways).to(embeddings.dtype)  # [N, ways]
    return member.T @ embeddings / member.sum(0).unsqueeze(-1)


def inner_gradient(
    loss: Callable[..., torch.Tensor], weights: Params, *args, first_order: bool = False
) -> Params:
    """d loss(weights, *args) / d weights; first-order drops the graph back through it (no
    second-order terms in the meta-gradient)."""
    grads = grad(loss)(weights, *args)
    return {name: g.detach() for name, g in grads.items()} if first_order else grads


def sgd_step(weights: Params, grads: Params, rate: float | Params) -> Params:
    """One inner gradient-descent step; `rate` is one number or a tensor per weight (learned
    rates)."""
    if isinstance(rate, dict):
        return {name: weights[name] - rate[name] * grads[name] for name in weights}
    return {name: weights[name] - rate * grads[name] for name in weights}


def loss_with_gradient(value: torch.Tensor, params: Params, gradient: Params) -> torch.Tensor:
    """A scalar equal to `value` whose gradient with respect to `params` is `gradient`.

    How an algorithm whose meta-update is not the gradient of its loss (Reptile, iMAML)
    hands that update to the engine, which only ever backpropagates task losses.
    """
    return value.detach() + sum(
        ((params[name] - params[name].detach()) * g.detach()).sum() for name, g in gradient.items()
    )


def lstm_cell(
    params: Params, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden, cell) after reading x [B, in] from state ([B, H], [B, H]), as nn.LSTMCell with
    the given parameters (its names). Written out because aten::lstm_cell has no vmap rule."""
    hidden, cell = state
    gates = (
        x @ params["weight_ih"].T
        + params["bias_ih"]
        + hidden @ params["weight_hh"].T
        + params["bias_hh"]
    )
    return lstm_update(gates, cell)


def lstm_update(gates: torch.Tensor, cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden, cell) from an LSTM's gate pre-activations [B, 4H] (input, forget, candidate,
    output, nn.LSTMCell's order) and the previous cell [B, H]; for callers that compute part of
    the pre-activations ahead of the recurrence."""
    input_gate, forget_gate, candidate, output_gate = gates.chunk(4, dim=-1)
    cell = torch.sigmoid(forget_gate) * cell + torch.sigmoid(input_gate) * torch.tanh(candidate)
    return torch.sigmoid(output_gate) * torch.tanh(cell), cell


def preprocess(x: torch.Tensor, p: float = 10.0) -> torch.Tensor:
    """Andrychowicz et al.'s scaling of values spanning many magnitudes: [..., 2]."""
    large = x.abs() >= math.exp(-p)
    magnitude = torch.where(
        large, x.abs().clamp_min(math.exp(-p)).log() / p, torch.full_like(x, -1.0)
    )
    direction = torch.where(large, x.sign(), math.exp(p) * x)
    return torch.stack([magnitude, direction], dim=-1)


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor):
    """log N(actions; mean, diag(exp(log_std))^2), summed over the last dimension."""
    z = (actions - mean) / log_std.exp()
    return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_kl(mean_p, log_std_p, mean_q, log_std_q) -> torch.Tensor:
    """KL(p || q) of diagonal Gaussians, summed over the last dimension."""
    variance_p, variance_q = (2 * log_std_p).exp(), (2 * log_std_q).exp()
    ratio = (variance_p + (mean_p - mean_q).pow(2)) / variance_q
    return (log_std_q - log_std_p + 0.5 * ratio - 0.5).sum(-1)
