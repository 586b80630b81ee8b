"""Feature extractors; each declares `out_features` so heads are sized automatically."""

from __future__ import annotations

from torch import nn

from metarun.errors import ConfigError


class Backbone(nn.Module):
    """A feature extractor: `out_features` features per example, set in `__init__`, so that
    an algorithm sizes its head from it."""

    out_features: int


def has_convolutions(algo: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in algo.modules())


def image_shape(backbone: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(channels, height, width) of the dataset's inputs, or a clear error when they are not
    images (a convolutional backbone on sinusoid's scalars)."""
    if len(input_shape) != 3:
        raise ConfigError(
            f"backbone={backbone} needs images [C, H, W] but the dataset gives inputs of "
            f"shape {tuple(input_shape)}. Use backbone=mlp for vector inputs."
        )
    channels, height, width = input_shape
    return channels, height, width
