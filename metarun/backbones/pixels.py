"""The raw pixels as one vector, for models that read images without an embedding (MANN reads
Omniglot's 20x20 drawings directly, as in Santoro et al. 2016)."""

from __future__ import annotations

import math

from torch import nn

from metarun.backbones import Backbone


class Pixels(nn.Flatten, Backbone):
    def __init__(self, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.out_features = math.prod(input_shape)
