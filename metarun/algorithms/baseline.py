"""Baseline and Baseline++ (Chen, Liu, Kira, Wang, Huang 2019, arXiv:1904.04232, "A Closer Look at
Few-shot Classification"): pre-train an ordinary classifier of every training class on
labelled batches, then for each task freeze the embedding and fit a new head on the support
set. `head=linear` is Baseline; `head=cosine` is Baseline++ (scaled cosine similarity to
each class's weight vector, in pre-training and fine-tuning alike).

The new head is fitted by `finetune_steps` of full-batch gradient descent with momentum and
weight decay on the support embeddings (Chen et al.: 100 epochs of mini-batches of 4). It
starts at zero (linear; with weight decay the problem is strongly convex, so the start does
not matter at convergence) or at the class-mean embeddings (cosine, where zero is undefined),
not at a random draw, so a task's result does not depend on the order tasks are evaluated in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad

from metarun.algorithms.base import Algorithm, Capabilities, Predictor
from metarun.algorithms.functional import Params, class_means, params_under
from metarun.backbones import Backbone
from metarun.errors import ConfigError

HEADS = ("linear", "cosine")


class Baseline(Algorithm):
    capabilities = Capabilities(learns_from="labelled_batches")

    def __init__(
        self,
        backbone: Backbone,
        out_features: int,
        *,
        head: str = "linear",
        scale: float = 10.0,
        finetune_steps: int = 100,
        finetune_lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 0.001,
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ConfigError(
                f"algo.head={head!r} is not known. Use algo.head=linear (Baseline) or "
                "algo.head=cosine (Baseline++)."
            )
        self.model = backbone
        self.classifier = nn.Linear(backbone.out_features, out_features, bias=head == "linear")
        self.head, self.scale = head, scale
        self.finetune_steps, self.finetune_lr = finetune_steps, finetune_lr
        self.momentum, self.weight_decay = momentum, weight_decay

    def logits(self, head: Params, features: torch.Tensor) -> torch.Tensor:
        if self.head == "cosine":
            return (
                self.scale * F.normalize(features, dim=-1) @ F.normalize(head["weight"], dim=-1).T
            )
        return features @ head["weight"].T + head["bias"]

    def fit_head(
        self, features: torch.Tensor, labels: torch.Tensor, ways: int, steps: int
    ) -> Params:
        """A new head for `ways` classes fitted to the (frozen) support embeddings."""
        if self.head == "cosine":
            head = {"weight": class_means(features, labels, ways)}
        else:
            head = {
                "weight": features.new_zeros(ways, features.shape[-1]),
                "bias": features.new_zeros(ways),
            }
        loss = lambda weights: F.cross_entropy(self.logits(weights, features), labels)
        velocity = {name: torch.zeros_like(value) for name, value in head.items()}
        for _ in range(steps):
            gradient = grad(loss)(head)
            velocity = {
                name: self.momentum * velocity[name]
                + gradient[name]
                + self.weight_decay * head[name]
                for name in head
            }
            head = {name: head[name] - self.finetune_lr * velocity[name] for name in head}
        return head

    def adapt(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        ways: int,
        steps: int | None = None,
    ) -> Predictor:
        self.check_classification(support_y)
        if (
            support_x.shape[0] == 0
        ):  # a labelled batch of every training class: the pre-training classifier
            classifier = params_under(params, "classifier.")  # a cosine head has no bias
            return lambda query_x: self.logits(classifier, self.run(params, query_x))
        frozen = {name: value.detach() for name, value in params.items()}
        embed = lambda x: self.run(frozen, x)  # inputs keep their gradient, for attacks
        head = self.fit_head(
            embed(support_x), support_y, ways, self.finetune_steps if steps is None else steps
        )
        return lambda query_x: self.logits(head, self.on_queries(embed, support_x, query_x))
