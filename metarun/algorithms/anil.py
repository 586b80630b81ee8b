"""ANIL (Raghu, Raghu, Bengio, Vinyals 2019, arXiv:1909.09157): MAML whose inner loop adapts
only the linear head; the backbone is meta-learned but never adapted per task, so each
task embeds its support set once and the inner steps are a cheap linear problem.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from torch.func import functional_call

from metarun.algorithms.base import Predictor
from metarun.algorithms.functional import Params, inner_gradient, params_under, sgd_step
from metarun.algorithms.maml import MAML
from metarun.metrics import task_loss_and_score


class ANIL(MAML):
    def adapt(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        ways: int,
        steps: int | None = None,
    ) -> Predictor:
        self.check_ways(support_y, ways)
        backbone, head = cast(nn.Sequential, self.model)
        body_params, head_params = (
            params_under(params, "model.0."),
            params_under(params, "model.1."),
        )
        features = functional_call(backbone, body_params, (support_x,))

        def head_loss(weights: Params) -> torch.Tensor:
            return task_loss_and_score(functional_call(head, weights, (features,)), support_y)[0]

        for _ in range(self.inner_steps if steps is None else steps):
            grads = inner_gradient(head_loss, head_params, first_order=self.uses_first_order())
            head_params = sgd_step(head_params, grads, self.inner_lr)
        embed = lambda x: functional_call(backbone, body_params, (x,))
        return lambda query_x: functional_call(
            head, head_params, (self.on_queries(embed, support_x, query_x),)
        )
