"""Relation Networks (Sung, Yang, Zhang, Xiang, Torr, Hospedales 2018, arXiv:1711.06025): a
learned relation module scores each (class, query) pair of feature maps in [0, 1], trained
by mean squared error against the one-hot match, as in the paper.

A class's feature map is the sum of its support embeddings (the paper's K-shot rule). The
embedding is the backbone's feature map (`out_shape`; Conv-4 with `pooled_blocks: 2` in the
presets); the relation module is two conv blocks and two linear layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metarun.algorithms.base import Algorithm, Predictor
from metarun.algorithms.functional import Params, params_under
from metarun.backbones import Backbone
from metarun.backbones.pooling import MaxPool2x2
from metarun.batchnorm import TaskBatchNorm2d
from metarun.errors import ConfigError


def _relation_module(
    channels: int, height: int, width: int, hidden: int, units: int
) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index in range(2):
        layers += [
            nn.Conv2d(2 * channels if index == 0 else hidden, hidden, 3, padding=1),
            TaskBatchNorm2d(hidden),
        ]
        if min(height, width) >= 2:
            layers.append(MaxPool2x2())
            height, width = height // 2, width // 2
        layers.append(nn.ReLU())
    return nn.Sequential(
        *layers,
        nn.Flatten(),
        nn.Linear(hidden * height * width, units),
        nn.ReLU(),
        nn.Linear(units, 1),
        nn.Sigmoid(),
    )


class RelationNet(Algorithm):
    def __init__(
        self, backbone: Backbone, out_features: int, *, hidden: int = 64, units: int = 8
    ) -> None:
        super().__init__()
        map_shape = getattr(backbone, "out_shape", None)  # convolutional backbones' [C, H, W]
        if map_shape is None:
            raise ConfigError(
                f"algo=relation_net compares feature maps, but backbone {type(backbone).__name__} "
                "gives vectors. Use backbone=conv4."
            )
        self.model = backbone
        channels, height, width = map_shape
        self.map_shape = channels, height, width
        self.relation = _relation_module(channels, height, width, hidden, units)

    def adapt(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        ways: int,
        steps: int | None = None,
    ) -> Predictor:
        self.check_classification(support_y)
        support = self.run(params, support_x)  # [ways*shots, C*H*W]
        classes = (
            F.one_hot(support_y, ways).to(support.dtype).T @ support
        )  # [ways, C*H*W], summed per class
        relation = params_under(params, "relation.")

        def relation_scores(query_x: torch.Tensor) -> torch.Tensor:
            queries = self.on_queries(
                lambda x: self.run(params, x), support_x, query_x
            )  # [Q, C*H*W]
            count, size = queries.shape
            pairs = torch.cat(
                [
                    classes.unsqueeze(0).expand(count, ways, size),
                    queries.unsqueeze(1).expand(count, ways, size),
                ],
                dim=-1,
            )
            channels, height, width = self.map_shape
            pairs = pairs.view(count * ways, 2, channels, height, width).flatten(
                1, 2
            )  # [Q*ways, 2C, H, W]
            return functional_call(self.relation, relation, (pairs,)).view(count, ways)

        return relation_scores

    def probabilities(self, predictions: torch.Tensor) -> torch.Tensor:
        """Relation scores in [0, 1] are not logits: normalised to sum to one over the classes
        (the paper defines no predictive distribution; this is our reading of its scores)."""
        return predictions / predictions.sum(-1, keepdim=True).clamp_min(1e-12)

    def task_loss(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        query_x: torch.Tensor,
        query_y: torch.Tensor,
        ways: int,
        steps: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """MSE between relation scores and the one-hot class match; accuracy of the best score."""
        scores = self.adapt(params, support_x, support_y, ways)(query_x)  # [Q, ways]
        loss = F.mse_loss(scores, F.one_hot(query_y, ways).to(scores.dtype))
        return loss, (scores.argmax(-1) == query_y).float().mean().detach()
