"""ResNet-12, the few-shot layout of TADAM (Oreshkin et al. 2018) and MetaOptNet (Lee et al.,
CVPR 2019): four residual blocks of 64-160-320-640 channels, each three 3x3 convolutions with
BatchNorm and leaky ReLU (0.1), a 1x1 convolution + BatchNorm shortcut and a 2x2 max-pool;
MetaOptNet's regularisers are options: dropout after the first two blocks, DropBlock (Ghiasi et
al. 2018) after the last two. At 84x84 the features are 640 x 5 x 5, flattened (MetaOptNet) or
averaged over space. BatchNorm is metarun's TaskBatchNorm2d, so every `bn` mode and the
functional inner loops work as with Conv-4.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import DropBlock2d

from metarun.batchnorm import TaskBatchNorm2d
from metarun.errors import ConfigError


class Block(nn.Module):
    def __init__(self, channels: int, planes: int, drop: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, planes, 3, padding=1, bias=False), TaskBatchNorm2d(planes),
            nn.LeakyReLU(0.1),
            nn.Conv2d(planes, planes, 3, padding=1, bias=False), TaskBatchNorm2d(planes),
            nn.LeakyReLU(0.1),
            nn.Conv2d(planes, planes, 3, padding=1, bias=False), TaskBatchNorm2d(planes),
        )  # fmt: skip
        self.shortcut = nn.Sequential(
            nn.Conv2d(channels, planes, 1, bias=False), TaskBatchNorm2d(planes)
        )
        self.out = nn.Sequential(nn.LeakyReLU(0.1), nn.MaxPool2d(2), drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x) + self.shortcut(x))


class ResNet12(nn.Module):
    def __init__(
        self,
        input_shape: tuple[int, ...],
        channels: list[int] = (64, 160, 320, 640),
        drop_rate: float = 0.0,
        drop_block_size: int = 5,
        average_pool: bool = False,
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(
                f"backbone=resnet12 needs images [C, H, W] but the dataset gives inputs of "
                f"shape {tuple(input_shape)}. Use backbone=mlp for vector inputs."
            )
        inputs, height, width = input_shape
        if min(height, width) < 16:
            raise ConfigError(f"Images of {tuple(input_shape)} are too small for ResNet-12's four "
                              "2x2 poolings; raise dataset.image_size to 16 or more.")  # fmt: skip
        blocks = []
        for index, planes in enumerate(channels):
            late = index >= len(channels) - 2
            drop = (DropBlock2d(drop_rate, drop_block_size) if late else nn.Dropout(drop_rate)) \
                if drop_rate > 0 else nn.Identity()  # fmt: skip
            blocks.append(Block(channels[index - 1] if index else inputs, planes, drop))
            height, width = height // 2, width // 2
        pool = [nn.AdaptiveAvgPool2d(1)] if average_pool else []
        self.features = nn.Sequential(*blocks, *pool, nn.Flatten())
        self.out_shape = (channels[-1], 1, 1) if average_pool else (channels[-1], height, width)
        self.out_features = channels[-1] * self.out_shape[1] * self.out_shape[2]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):  # MetaOptNet's initialisation
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)
