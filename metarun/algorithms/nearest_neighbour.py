"""Nearest neighbour on an embedding, the sanity baseline of few-shot classification: a query
takes the class of its nearest support example (`rule=example`, 1-NN) or nearest class mean
(`rule=class_mean`), by squared Euclidean distance or cosine similarity.

Class scores are the negative distance (or the similarity) to the class's nearest example or
mean, so the rule can also be trained with cross-entropy: class_mean + euclidean is
Prototypical Networks (`ProtoNet` is that). Its usual use is to test another run's embedding
without training: `init_from=<run folder> trainer.iterations=0`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from metarun.algorithms.base import Algorithm, Predictor
from metarun.algorithms.functional import Params, class_means
from metarun.backbones import Backbone
from metarun.errors import ConfigError

RULES, METRICS = ("example", "class_mean"), ("euclidean", "cosine")


class NearestNeighbour(Algorithm):
    def __init__(
        self,
        backbone: Backbone,
        out_features: int,
        *,
        rule: str = "example",
        metric: str = "euclidean",
    ) -> None:
        super().__init__()
        if rule not in RULES or metric not in METRICS:
            raise ConfigError(
                f"algo.rule={rule!r} / algo.metric={metric!r}: use algo.rule=example or class_mean "
                "and algo.metric=euclidean or cosine."
            )
        self.model = backbone
        self.rule, self.metric = rule, metric

    def similarity(self, queries: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        """[Q, R]: cosine similarity, or negative squared Euclidean distance."""
        if self.metric == "cosine":
            return F.normalize(queries, dim=-1) @ F.normalize(references, dim=-1).T
        return -(queries.unsqueeze(1) - references.unsqueeze(0)).pow(2).sum(-1)

    def adapt(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        ways: int,
        steps: int | None = None,
    ) -> Predictor:
        self.check_classification(support_y)
        support = self.run(params, support_x)  # [ways*shots, D]
        references = class_means(support, support_y, ways) if self.rule == "class_mean" else support
        other_class = F.one_hot(support_y, ways) == 0  # [ways*shots, ways]

        def class_scores(query_x: torch.Tensor) -> torch.Tensor:
            queries = self.on_queries(lambda x: self.run(params, x), support_x, query_x)  # [Q, D]
            scores = self.similarity(queries, references)  # [Q, ways] or [Q, ways*shots]
            if self.rule == "class_mean":
                return scores
            return scores.unsqueeze(-1).masked_fill(other_class, float("-inf")).amax(1)  # [Q, ways]

        return class_scores
