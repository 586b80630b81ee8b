"""Prototypical Networks (Snell, Swersky, Zemel 2017, arXiv:1703.05175): classify a query by
the squared Euclidean distance of its embedding to each class's mean support embedding.
"""

from __future__ import annotations

import torch
from torch import nn

from metarun.algorithms.base import Algorithm, Params, Predictor


class ProtoNet(Algorithm):
    def __init__(self, backbone: nn.Module, out_features: int) -> None:
        super().__init__()
        self.model = backbone

    def adapt(self, params: Params, support_x: torch.Tensor, support_y: torch.Tensor, ways: int,
              steps: int | None = None) -> Predictor:
        self.check_classification(support_y)
        embeddings = self.run(params, support_x)  # [ways*shots, D]
        one_hot = (support_y.unsqueeze(-1) == torch.arange(ways, device=support_y.device)).to(embeddings.dtype)
        prototypes = one_hot.T @ embeddings / one_hot.sum(0).unsqueeze(-1)  # [ways, D]

        def negative_squared_distance(query_x: torch.Tensor) -> torch.Tensor:
            queries = self.on_queries(lambda x: self.run(params, x), support_x, query_x)  # [Q, D]
            return -(queries.unsqueeze(1) - prototypes.unsqueeze(0)).pow(2).sum(-1)  # [Q, ways]

        return negative_squared_distance
