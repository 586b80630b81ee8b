"""Conv-4: 4 x [conv3x3(64), BatchNorm, ReLU, maxpool2], the MAML / ProtoNet embedding.

`pooled_blocks` < blocks leaves the last blocks at full size (Relation Networks keep a 7x7
map); `out_shape` is the feature map's [C, H, W] before flattening.

`batch_norm=False` leaves BatchNorm out of every block (Meta Networks' authors' blocks).

`downsample="stride"` halves the map with the convolution itself (stride 2) instead of
max-pooling, and `average_pool` averages the last map over its positions: MAML's
Omniglot model (Finn et al. 2017, Sec. 5.2; the official code's default, and
learn2learn's `OmniglotCNN`): 28 -> 14 -> 7 -> 4 -> 2, averaged to 64 features. It costs a
quarter of the convolutions' arithmetic and no pooling.

ReLU runs after the pooling: max-pooling and ReLU commute (ReLU is monotone), so the
function and its gradients are the same, and ReLU and its backward touch a quarter of
the values (13% faster second-order MAML on a CPU).

Compiled on a CPU, a first block over one input channel (Omniglot's) is computed as one
batched product of the image patches with BatchNorm folded into the weights, its statistics
taken from the patches (`TaskBatchNorm2d.folded_into`), and the patches ordered by their place
in the 2x2 pooling window, so max-pooling is a selection among four contiguous maps
(`max_of_window`). The same function and gradients (ties included), without a normalising
pass or the max-pooling backward's scatter over the largest map: 1.2x second-order MAML's
compiled meta-gradient on Omniglot 5w1s (15 queries), 1.35x vmapped with 1 query. Uncompiled,
torch's fused BatchNorm and pooling kernels are as fast or faster, so that path stays.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from metarun.auto_rules import PATCH_VALUES_FOR_PRODUCT
from metarun.backbones import Backbone, image_shape
from metarun.backbones.pooling import MaxPool2x2, max_of_window
from metarun.batchnorm import TaskBatchNorm2d
from metarun.errors import ConfigError

DOWNSAMPLING = ("maxpool", "stride")


class Conv4(Backbone):
    def __init__(
        self,
        input_shape: tuple[int, ...],
        hidden: int = 64,
        blocks: int = 4,
        pooled_blocks: int | None = None,
        downsample: str = "maxpool",
        average_pool: bool = False,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        if downsample not in DOWNSAMPLING:
            raise ConfigError(
                f"backbone.downsample={downsample!r} is not one of {', '.join(DOWNSAMPLING)}: "
                "'maxpool' pools each block's output 2x2, 'stride' lets its convolution stride 2."
            )
        channels, height, width = image_shape("conv4", input_shape)
        pooled_blocks = blocks if pooled_blocks is None else pooled_blocks
        layers: list[nn.Module] = []
        for index in range(blocks):
            halves = index < pooled_blocks
            stride = 2 if halves and downsample == "stride" else 1
            layers.append(
                nn.Conv2d(channels if index == 0 else hidden, hidden, 3, stride, padding=1)
            )
            if batch_norm:
                layers.append(TaskBatchNorm2d(hidden))
            if halves and downsample == "maxpool":
                layers.append(MaxPool2x2())
                height, width = height // 2, width // 2
            elif halves:
                height, width = (height + 1) // 2, (width + 1) // 2
            layers.append(nn.ReLU())
        if height < 1 or width < 1:
            raise ConfigError(
                f"Images of {tuple(input_shape)} are too small for {pooled_blocks} pooling blocks; "
                "raise dataset.image_size."
            )
        if average_pool:
            layers.append(nn.AdaptiveAvgPool2d(1))
            height = width = 1
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.out_shape = (hidden, height, width)
        self.out_features = hidden * height * width
        self.pools_first_block = pooled_blocks > 0 and downsample == "maxpool"
        self.first_block_layers = 3 if self.pools_first_block else 2  # conv, BN(, pool); ReLU
        self.first_block_can_be_product = (
            batch_norm and blocks > 0 and channels * 9 <= PATCH_VALUES_FOR_PRODUCT
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._first_block_is_one_product(x):
            return self.features[self.first_block_layers :](self._first_block(x))
        return self.features(x)

    def _first_map_size(self, x: torch.Tensor) -> tuple[int, int]:
        conv = cast(nn.Conv2d, self.features[0])
        pad, stride = cast(tuple[int, int], conv.padding)[0], conv.stride[0]
        height, width = ((size + 2 * pad - 3) // stride + 1 for size in x.shape[-2:])
        return height, width

    def _first_block_is_one_product(self, x: torch.Tensor) -> bool:
        return (
            self.first_block_can_be_product
            and x.device.type == "cpu"
            and torch.compiler.is_compiling()
            and not torch.is_autocast_enabled("cpu")
            and not (self.pools_first_block and any(size % 2 for size in self._first_map_size(x)))
        )

    def _first_block(self, x: torch.Tensor) -> torch.Tensor:
        """conv -> BatchNorm (-> 2x2 max-pooling) of the first block, as one batched product."""
        conv, norm = cast(nn.Conv2d, self.features[0]), cast(TaskBatchNorm2d, self.features[1])
        height, width = self._first_map_size(x)
        padding = cast(tuple[int, int], conv.padding)
        patches = F.unfold(x, 3, padding=padding, stride=conv.stride)  # [N, K, H * W]
        count, values = patches.shape[:2]
        if self.pools_first_block:  # order the positions by their place in the pooling window
            patches = patches.view(count, values, height // 2, 2, width // 2, 2)
            patches = patches.permute(0, 1, 3, 5, 2, 4).reshape(count, values, -1)
        weight, bias = norm.folded_into(conv, patches)
        maps = torch.baddbmm(bias.view(1, -1, 1), weight.expand(count, -1, -1), patches)
        if not self.pools_first_block:
            return maps.view(count, -1, height, width)
        window = maps.view(count, -1, 4, (height // 2) * (width // 2)).unbind(2)
        return max_of_window(window).view(count, -1, height // 2, width // 2)
