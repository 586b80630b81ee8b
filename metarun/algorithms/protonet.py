"""Prototypical Networks (Snell, Swersky, Zemel 2017, arXiv:1703.05175): classify a query by
the squared Euclidean distance of its embedding to each class's mean support embedding,
trained with cross-entropy over the negative distances. That is the nearest-class-mean rule
of `NearestNeighbour` with the Euclidean metric, so this class only fixes those two choices.
"""

from __future__ import annotations

from torch import nn

from metarun.algorithms.nearest_neighbour import NearestNeighbour


class ProtoNet(NearestNeighbour):
    def __init__(self, backbone: nn.Module, out_features: int) -> None:
        super().__init__(backbone, out_features, rule="class_mean", metric="euclidean")
