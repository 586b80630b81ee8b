"""Meta Networks (Munkhdalai & Yu 2017, arXiv:1703.00837): a base learner and a representation
learner, each with slow weights (meta-learned) and fast weights generated for the task from loss
gradients, combined by layer augmentation: a layer's output is activation(slow) +
activation(fast).

- Representation fast weights: one gradient of the representation learner's own
  classification loss on the support set, mapped coordinate-wise by a small MLP.
- Base fast weights: one per support example, the MLP applied to that example's loss gradient;
  a query's fast weights are the attention-weighted sum (softmax of cosine similarities between
  the query's and the support examples' representations) of the support examples' ones.
Gradients enter the meta learners as inputs only (the paper's code does not differentiate
through them). Every example goes through the networks alone, so BatchNorm normalises each
drawing over its own pixels, support and query alike.

Against the authors' code (tsendeemts/MetaNet, Chainer: `MetaNetFull.py`, `utilsf.py`): their
blocks are conv (no bias) + ReLU without BatchNorm, and a block's slow and fast paths are summed
as relu(slow) + relu(fast) before pooling; `backbone.batch_norm=false` with
`algo.join_before_pooling=true` (the default) gives that. Our preset keeps BatchNorm: without it
the default initialisation's fast weights (about 0.3 a coordinate) blew the tiny test problem's
first loss up to 401. Their backbone has 5 blocks with ceil pooling (our Conv-4 has 4); the
representation learner's fast weights come from one gradient of the whole support set (theirs
accumulate 5 chunks in an LSTM); one MLP per learner serves all its layers (theirs: one for the
convolutions, one for the dense layers); they train one episode per update with 10 queries per
class.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from metarun.algorithms.base import Algorithm, Predictor
from metarun.algorithms.functional import Params, params_under, preprocess
from metarun.backbones import Backbone
from metarun.errors import ConfigError


class Learner(nn.Module):
    """Backbone -> fc1 (ReLU) -> fc2, without biases on the dense layers (as in the paper's code);
    fc1's output is the representation, fc2 classifies."""

    def __init__(self, backbone: Backbone, width: int, classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.fc1 = nn.Linear(backbone.out_features, width, bias=False)
        self.fc2 = nn.Linear(width, classes, bias=False)


def augmented(
    module: Learner,
    slow: Params,
    fast: Params | None,
    x: torch.Tensor,
    until: str = "fc2",
    join_before_pooling: bool = False,
) -> torch.Tensor:
    """A Learner's output (or fc1's, until="fc1") on one example x [C, H, W] with layer
    augmentation: each convolution or dense layer with fast weights runs twice, with the slow and
    with the fast weights; both paths go through what follows (normalisation, pooling, ReLU) up
    to the next such layer, where they are summed. `join_before_pooling` sums them at a pooling
    layer instead, as relu(slow) + relu(fast) (the authors' code): the ReLU after the pooling
    then changes nothing, the sum being non-negative."""
    paths = [x.unsqueeze(0)]
    features = cast(nn.Sequential, module.backbone.features)
    layers = [(f"backbone.features.{i}", m) for i, m in enumerate(features)]
    layers += [("fc1", module.fc1), ("relu", nn.ReLU())] + (
        [("fc2", module.fc2)] * (until == "fc2")
    )
    for name, layer in layers:
        if isinstance(layer, nn.Conv2d | nn.Linear):
            h = _summed(paths)
            weights = params_under(slow, f"{name}.")
            paths = [functional_call(layer, weights, (h,))]
            if fast is not None and f"{name}.weight" in fast:
                fast_only = {**weights, "weight": fast[f"{name}.weight"], "bias": None}
                paths.append(functional_call(layer, cast(Params, fast_only), (h,)))
        else:
            if join_before_pooling and isinstance(layer, nn.MaxPool2d):
                paths = [_summed([F.relu(p) for p in paths])]
            weights = params_under(slow, f"{name}.")
            paths = [functional_call(layer, weights, (p,)) for p in paths]
    return _summed(paths)[0]


def _summed(paths: list[torch.Tensor]) -> torch.Tensor:
    """The paths' sum, added in order."""
    return cast(torch.Tensor, sum(paths))


class MetaNet(Algorithm):
    model: Learner

    def __init__(
        self,
        backbone: Backbone,
        out_features: int,
        *,
        width: int = 64,
        meta_hidden: int = 20,
        join_before_pooling: bool = True,
    ) -> None:
        super().__init__()
        if width < 1 or meta_hidden < 1:
            raise ConfigError(
                f"algo.width and algo.meta_hidden must be at least 1 (got {width}, {meta_hidden})."
            )
        self.out_features, self.join_before_pooling = out_features, join_before_pooling
        self.model = Learner(backbone, width, out_features)  # the base learner
        self.representation = Learner(copy.deepcopy(backbone), width, out_features)
        # The representation loss only feeds gradients to its meta learner, as inputs: nothing
        # would train its classifier, which therefore stays a fixed random projection.
        head, weight = self.representation.fc2, self.representation.fc2.weight.detach()
        del head.weight
        head.register_buffer("weight", weight)
        self.base_weights = nn.Sequential(  # gradient -> fast weight, per coordinate
            nn.Linear(2, meta_hidden),
            nn.ReLU(),
            nn.Linear(meta_hidden, meta_hidden),
            nn.ReLU(),
            nn.Linear(meta_hidden, 1),
        )
        self.representation_weights = copy.deepcopy(self.base_weights)

    def _fast_weights(self, params: Params, network: str, gradients: Params) -> Params:
        """The meta learner `network` applied to every coordinate of the (preprocessed) gradients
        of the weights of convolutions and dense layers."""
        mlp = params_under(params, f"{network}.")
        return {
            name: functional_call(
                getattr(self, network), mlp, (preprocess(g.detach(), 7.0),)
            ).squeeze(-1)
            for name, g in gradients.items()
        }

    @staticmethod
    def _loss(module: Learner, weights: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = vmap(lambda one: augmented(module, weights, None, one))(x)
        return F.cross_entropy(logits, y)

    @staticmethod
    def _adapted(weights: Params) -> Params:
        """The weights fast weights are made for: every convolution's and dense layer's."""
        return {name: w for name, w in weights.items() if name.endswith("weight") and w.dim() > 1}

    def memory(
        self, params: Params, support_x: torch.Tensor, support_y: torch.Tensor
    ) -> tuple[Callable[[torch.Tensor], torch.Tensor], Params]:
        """The representation function (with its fast weights for this task) and the base
        learner's fast weights of each support example ({name: [S, ...]})."""
        base, represent = params_under(params, "model."), params_under(params, "representation.")
        representation_loss = lambda adapted: self._loss(
            self.representation, {**represent, **adapted}, support_x, support_y
        )
        gradient = grad(representation_loss)(self._adapted(represent))
        represent_fast = self._fast_weights(params, "representation_weights", gradient)
        keys = lambda x: vmap(
            lambda one: augmented(
                self.representation, represent, represent_fast, one, "fc1", self.join_before_pooling
            )
        )(x)
        example_loss = lambda adapted, x, y: self._loss(
            self.model, {**base, **adapted}, x[None], y[None]
        )
        per_example = vmap(grad(example_loss), in_dims=(None, 0, 0))(
            self._adapted(base), support_x, support_y
        )
        return keys, self._fast_weights(params, "base_weights", per_example)

    def adapt(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        ways: int,
        steps: int | None = None,
    ) -> Predictor:
        self.check_classification(support_y)
        self.check_ways(support_y, ways)
        keys, memory = self.memory(params, support_x, support_y)
        support_keys = F.normalize(keys(support_x), dim=-1)  # [S, width]
        base = params_under(params, "model.")

        def classify(query_x: torch.Tensor) -> torch.Tensor:
            attention = torch.softmax(F.normalize(keys(query_x), dim=-1) @ support_keys.T, dim=-1)
            fast = {n: torch.tensordot(attention, m, dims=1) for n, m in memory.items()}  # [Q, ...]
            return vmap(
                lambda x, f: augmented(self.model, base, f, x, "fc2", self.join_before_pooling)
            )(query_x, fast)

        return classify
