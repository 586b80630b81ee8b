"""torchvision's ResNet-18 as an embedding (Chen et al., ICLR 2019, compare methods with it),
its classifier removed and its BatchNorm metarun's TaskBatchNorm2d so every `bn` mode and the
functional inner loops work: 512 features after global average pooling."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet18

from metarun.backbones import Backbone, image_shape
from metarun.batchnorm import TaskBatchNorm2d


class ResNet18(Backbone):
    def __init__(self, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        channels = image_shape("resnet18", input_shape)[0]
        self.network = resnet18(weights=None, num_classes=1, norm_layer=TaskBatchNorm2d)
        if channels != 3:
            self.network.conv1 = nn.Conv2d(channels, 64, 7, 2, 3, bias=False)
        self.network.fc = nn.Identity()
        self.out_shape = (512, 1, 1)
        self.out_features = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)
