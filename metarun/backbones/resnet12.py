"""ResNet-12, the few-shot layout of TADAM (Oreshkin et al. 2018) and MetaOptNet (Lee et al.,
CVPR 2019): four residual blocks of 64-160-320-640 channels, each three 3x3 convolutions with
BatchNorm and leaky ReLU (0.1), a 1x1 convolution + BatchNorm shortcut and a 2x2 max-pool;
MetaOptNet's regularisers are options: dropout after the first two blocks, DropBlock (Ghiasi et
al. 2018) after the last two. At 84x84 the features are 640 x 5 x 5, flattened (MetaOptNet) or
averaged over space. BatchNorm is metarun's TaskBatchNorm2d, so every `bn` mode and the
functional inner loops work as with Conv-4.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from metarun.backbones import Backbone, image_shape
from metarun.backbones.pooling import MaxPool2x2
from metarun.batchnorm import TaskBatchNorm2d
from metarun.errors import ConfigError


class DropBlock(nn.Module):
    """DropBlock (Ghiasi et al. 2018): zeroes random block x block squares of each feature map in
    training and rescales the rest. torchvision.ops.DropBlock2d draws its noise in place on an
    unbatched tensor, which torch.func.vmap refuses; this draws it from the batched input."""

    def __init__(self, p: float, block_size: int) -> None:
        super().__init__()
        self.p, self.block_size = p, block_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        height, width, b = x.shape[-2], x.shape[-1], self.block_size
        gamma = self.p * height * width / (b * b * (height - b + 1) * (width - b + 1))
        centres = torch.bernoulli(torch.full_like(x[..., : height - b + 1, : width - b + 1], gamma))
        dropped = F.max_pool2d(F.pad(centres, [b // 2] * 4), b, stride=1, padding=b // 2)
        keep = 1.0 - dropped  # [..., height, width]: b odd keeps the size
        return x * keep * (keep.numel() / keep.sum().clamp_min(1.0))


class Block(nn.Module):
    def __init__(self, channels: int, planes: int, drop: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, planes, 3, padding=1, bias=False),
            TaskBatchNorm2d(planes),
            nn.LeakyReLU(0.1),
            nn.Conv2d(planes, planes, 3, padding=1, bias=False),
            TaskBatchNorm2d(planes),
            nn.LeakyReLU(0.1),
            nn.Conv2d(planes, planes, 3, padding=1, bias=False),
            TaskBatchNorm2d(planes),
        )
        self.shortcut = nn.Sequential(
            nn.Conv2d(channels, planes, 1, bias=False), TaskBatchNorm2d(planes)
        )
        self.out = nn.Sequential(nn.LeakyReLU(0.1), MaxPool2x2(), drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x) + self.shortcut(x))


class ResNet12(Backbone):
    def __init__(
        self,
        input_shape: tuple[int, ...],
        channels: Sequence[int] = (64, 160, 320, 640),
        drop_rate: float = 0.0,
        drop_block_size: int = 5,
        average_pool: bool = False,
    ) -> None:
        super().__init__()
        inputs, height, width = image_shape("resnet12", input_shape)
        smallest = 2 ** len(channels)  # one 2x2 pooling per block
        if min(height, width) < smallest:
            raise ConfigError(
                f"Images of {tuple(input_shape)} are too small for ResNet-12's {len(channels)} "
                f"2x2 poolings; raise dataset.image_size to {smallest} or more."
            )
        if drop_block_size % 2 == 0:
            raise ConfigError(
                f"backbone.drop_block_size={drop_block_size}: DropBlock's blocks are centred, so "
                "their size must be odd. Use 5 (MetaOptNet) or another odd number."
            )
        blocks = []
        for index, planes in enumerate(channels):
            height, width = height // 2, width // 2
            drop: nn.Module = nn.Identity()
            if drop_rate > 0 and index >= len(channels) - 2:
                side = min(height, width)  # an odd block that fits in the map
                drop = DropBlock(drop_rate, min(drop_block_size, side - 1 + side % 2))
            elif drop_rate > 0:
                drop = nn.Dropout(drop_rate)
            blocks.append(Block(channels[index - 1] if index else inputs, planes, drop))
        pool = [nn.AdaptiveAvgPool2d(1)] if average_pool else []
        self.features = nn.Sequential(*blocks, *pool, nn.Flatten())
        self.out_shape = (channels[-1], 1, 1) if average_pool else (channels[-1], height, width)
        self.out_features = channels[-1] * self.out_shape[1] * self.out_shape[2]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):  # MetaOptNet's initialisation
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)
