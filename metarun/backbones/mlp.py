"""A ReLU MLP body (40-40 hidden units in MAML's sinusoid experiment)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from metarun.backbones import Backbone
from metarun.errors import ConfigError


class MLP(Backbone):
    def __init__(self, input_shape: tuple[int, ...], hidden: Sequence[int] = (40, 40)) -> None:
        super().__init__()
        if len(input_shape) != 1:
            raise ConfigError(
                f"backbone=mlp needs vector inputs but the dataset gives inputs of shape "
                f"{tuple(input_shape)}. Use backbone=conv4 for images."
            )
        sizes = [input_shape[0], *hidden]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.out_features = sizes[-1]

    def forward(self, x):
        return self.features(x)
