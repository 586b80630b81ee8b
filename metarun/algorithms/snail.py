"""SNAIL (Mishra, Rohaninejad, Chen, Abbeel 2018, arXiv:1707.03141): a task is read as a
sequence of (embedding, one-hot label) steps by temporal convolutions (dense blocks of dilated
causal convolutions) interleaved with causal soft attention; the query is the last step.

The Omniglot architecture: Attention(64, 32), TC(T, 128), Attention(256, 128), TC(T, 128),
Attention(512, 256), then a 1x1 convolution to the classes; a TC block over sequences of
length T stacks ceil(log2 T) dense blocks with dilations 2, 4, 8, ... as in the paper's
pseudo-code (TCBlock: DenseBlock(X, 2^i, D) for i = 1..ceil(log2 T)) and the common PyTorch
reimplementation (eambutu/snail-pytorch). `first_dilation=1` gives 1, 2, 4, ..., where each
block also sees the step just before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metarun.algorithms.functional import Params, params_under
from metarun.algorithms.sequence import SequenceLearner
from metarun.backbones import Backbone
from metarun.errors import ConfigError


class DenseBlock(nn.Module):
    """Gated causal convolution (kernel 2, `dilation`) whose `filters` outputs are appended."""

    def __init__(self, channels: int, filters: int, dilation: int) -> None:
        super().__init__()
        self.dilation = dilation
        self.conv = nn.Conv1d(channels, 2 * filters, kernel_size=2, dilation=dilation)

    def forward(self, x: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        """[B, C, T] -> [B, C + filters, T]; with the inputs of the steps before x ([1, C, S];
        then x is one step [B, C, 1]), that step alone."""
        if history is None:
            window, dilation = F.pad(x, (self.dilation, 0)), self.dilation  # left pad: causal
        else:
            earlier = F.pad(history, (max(self.dilation - history.shape[-1], 0), 0))
            earlier = earlier[..., -self.dilation].unsqueeze(-1).expand(x.shape[0], -1, 1)
            window, dilation = torch.cat([earlier, x], dim=-1), 1  # the two taps of step S
        signal, gate = F.conv1d(window, self.conv.weight, self.conv.bias, dilation=dilation).chunk(
            2, dim=1
        )
        return torch.cat([x, torch.tanh(signal) * torch.sigmoid(gate)], dim=1)


class AttentionBlock(nn.Module):
    """Causal single-head soft attention whose `value_size` read is appended to its input."""

    def __init__(self, channels: int, key_size: int, value_size: int) -> None:
        super().__init__()
        self.query = nn.Linear(channels, key_size)
        self.key = nn.Linear(channels, key_size)
        self.value = nn.Linear(channels, value_size)

    def forward(self, x: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        """[B, C, T] -> [B, C + value_size, T]; with the inputs of the steps before x ([1, C, S];
        then x is one step [B, C, 1]), that step alone, attending to them and itself."""
        steps = x.transpose(1, 2)  # [B, T, C]
        query = self.query(steps)
        seen = (
            steps
            if history is None
            else torch.cat([history.transpose(1, 2).expand(x.shape[0], -1, -1), steps], dim=1)
        )  # [B, S + T, C]
        key, value = self.key(seen), self.value(seen)
        logits = query @ key.transpose(1, 2) / math.sqrt(key.shape[-1])  # [B, T, S + T]
        if history is None:
            later = torch.ones_like(logits[0], dtype=torch.bool).triu(1)
            logits = logits.masked_fill(later, float("-inf"))
        read = torch.softmax(logits, dim=-1) @ value  # [B, T, value_size]
        return torch.cat([x, read.transpose(1, 2)], dim=1)


def tc_block(
    channels: int, length: int, filters: int, first_dilation: int = 2
) -> tuple[list[DenseBlock], int]:
    """ceil(log2 length) dense blocks with dilations first_dilation, twice that, ..., and the
    channels they end with."""
    blocks = []
    for level in range(math.ceil(math.log2(length))):
        blocks.append(DenseBlock(channels, filters, first_dilation * 2**level))
        channels += filters
    return blocks, channels


class SNAIL(SequenceLearner):
    def __init__(
        self,
        backbone: Backbone,
        out_features: int,
        *,
        length: int,
        filters: int = 128,
        attention: Sequence[Sequence[int]] = ((64, 32), (256, 128), (512, 256)),
        first_dilation: int = 2,
    ) -> None:
        super().__init__()
        if length < 2 or len(attention) < 1 or first_dilation not in (1, 2):
            raise ConfigError(
                f"algo.length={length} must be at least 2 (support steps + the query), "
                "algo.attention must list at least one [key_size, value_size] and "
                f"algo.first_dilation={first_dilation} must be 2 (the paper's) or 1."
            )
        self.model, self.out_features, self.length = backbone, out_features, length
        channels, layers = backbone.out_features + out_features, list[nn.Module]()
        for index, (key_size, value_size) in enumerate(attention):
            if index > 0:
                blocks, channels = tc_block(channels, length, filters, first_dilation)
                layers += blocks
            layers.append(AttentionBlock(channels, key_size, value_size))
            channels += value_size
        layers.append(nn.Conv1d(channels, out_features, kernel_size=1))
        self.sequence = nn.Sequential(*layers)

    def _layers(self, params: Params):
        """(layer, its parameters) in order, for calls with the given parameters."""
        for index, layer in enumerate(self.sequence):
            yield layer, params_under(params, f"sequence.{index}.")

    def read(self, params: Params, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        steps = torch.cat([features, labels], dim=-1).transpose(1, 2)  # [B, D + ways, T]
        for layer, weights in self._layers(params):
            steps = functional_call(layer, weights, (steps,))
        return steps.transpose(1, 2)  # [B, T, ways]

    def read_queries(
        self, params: Params, support: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor
    ) -> torch.Tensor:
        """The support sequence is read once; each block then computes only the query's step
        from its own inputs of the support steps (causality makes those the same for every
        query)."""
        history = torch.cat([support, labels], dim=-1).T.unsqueeze(0)  # [1, C, S]
        step = torch.cat([queries, labels.new_zeros(queries.shape[0], labels.shape[-1])], dim=-1)
        step = step.unsqueeze(-1)  # [Q, C, 1]
        for layer, weights in self._layers(params):
            if isinstance(layer, nn.Conv1d):
                step = functional_call(layer, weights, (step,))
                continue
            step, history = (
                functional_call(layer, weights, (step,), {"history": history}),
                functional_call(layer, weights, (history,)),
            )
        return step[..., 0]  # [Q, ways]
