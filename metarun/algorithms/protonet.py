"""Prototypical Networks (Snell, Swersky, Zemel 2017, arXiv:1703.05175): classify a query by
the squared Euclidean distance of its embedding to each class's mean support embedding,
trained with cross-entropy over the negative distances. That is the nearest-class-mean rule
of `NearestNeighbour` with the Euclidean metric, so this class only fixes those two choices,
plus MetaOptNet's option (Lee et al. 2019) of averaging the squared distance over the
embedding's dimensions, which keeps the first logits of a 16,000-d ResNet-12 embedding usable.
"""

from __future__ import annotations

import torch

from metarun.algorithms.nearest_neighbour import NearestNeighbour
from metarun.backbones import Backbone


class ProtoNet(NearestNeighbour):
    def __init__(self, backbone: Backbone, out_features: int, mean_distance: bool = False) -> None:
        super().__init__(backbone, out_features, rule="class_mean", metric="euclidean")
        self.mean_distance = mean_distance

    def similarity(self, queries: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        scores = super().similarity(queries, references)
        return scores / queries.shape[-1] if self.mean_distance else scores
