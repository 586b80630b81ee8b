"""Meta-SGD (Li, Zhou, Chen, Li 2017, arXiv:1707.09835): MAML whose inner step size is a
learned tensor the shape of each weight (a rate and a direction per coordinate),
meta-learned together with the initialisation.
"""

from __future__ import annotations

import torch
from torch import nn

from metarun.algorithms.functional import Params, sgd_step
from metarun.algorithms.maml import MAML
from metarun.backbones import Backbone


class MetaSGD(MAML):
    def __init__(
        self,
        backbone: Backbone,
        out_features: int,
        *,
        inner_lr: float,
        inner_steps: int,
        first_order: bool = False,
        inner_lr_range: tuple[float, float] | None = None,
    ) -> None:
        """inner_lr_range: draw the initial rates uniformly from it (the paper's choice), else
        every rate starts at inner_lr."""
        super().__init__(
            backbone,
            out_features,
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            first_order=first_order,
        )
        self.inner_lrs = nn.ParameterList(
            nn.Parameter(
                torch.full_like(p, inner_lr)
                if inner_lr_range is None
                else torch.empty_like(p).uniform_(*inner_lr_range)
            )
            for p in self.model.parameters()
        )
        self.rate_of = {
            f"model.{name}": f"inner_lrs.{index}"
            for index, (name, _) in enumerate(self.model.named_parameters())
        }

    def inner_update(self, params: Params, fast: Params, grads: Params, step: int) -> Params:
        return sgd_step(fast, grads, {name: params[self.rate_of[name]] for name in fast})
