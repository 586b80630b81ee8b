"""The LSTM meta-learner (Ravi & Larochelle 2017, "Optimization as a model for few-shot
learning"): a coordinate-wise LSTM whose cell state is the learner's weights. Each inner
step reads the (preprocessed) support gradient and loss of every coordinate, and updates

    c_t = f_t * c_{t-1} - i_t * grad_t

with the input gate i_t acting as a learned learning rate and the forget gate f_t as a
learned weight decay. The learner's initial weights c_0 are meta-learned with the LSTM.
As in the paper, gradients and losses enter as inputs only (no second derivatives).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad_and_value

from metarun.algorithms.base import Algorithm, Predictor
from metarun.algorithms.functional import Params, lstm_cell, params_under, preprocess
from metarun.backbones import Backbone
from metarun.errors import ConfigError
from metarun.metrics import task_loss_and_score


class LSTMMetaLearner(Algorithm):
    def __init__(
        self,
        backbone: Backbone,
        out_features: int,
        *,
        inner_steps: int,
        hidden: int = 20,
        forget_bias: tuple[float, float] = (4.0, 6.0),
        input_bias: tuple[float, float] = (-5.0, -4.0),
    ) -> None:
        """forget_bias/input_bias: the gates' initial biases are drawn from these ranges (the
        paper's choice), so training starts close to SGD with a small rate and no decay."""
        super().__init__()
        if inner_steps < 0 or hidden < 1:
            raise ConfigError(
                f"algo.inner_steps must be >= 0 and algo.hidden >= 1 (got {inner_steps}, {hidden})."
            )
        self.model = nn.Sequential(backbone, nn.Linear(backbone.out_features, out_features))
        self.out_features, self.inner_steps = out_features, inner_steps
        self.lstm = nn.LSTMCell(4, hidden)
        self.input_gate, self.forget_gate = nn.Linear(hidden + 2, 1), nn.Linear(hidden + 2, 1)
        with torch.no_grad():
            for gate, bias in ((self.input_gate, input_bias), (self.forget_gate, forget_bias)):
                gate.weight.uniform_(-0.01, 0.01)
                gate.bias.uniform_(*bias)
        self.shapes = {f"model.{name}": p.shape for name, p in self.model.named_parameters()}

    def _unflatten(self, flat: torch.Tensor) -> Params:
        sizes = [shape.numel() for shape in self.shapes.values()]
        return {
            name: part.view(shape)
            for (name, shape), part in zip(self.shapes.items(), flat.split(sizes))
        }

    def _gate(
        self,
        name: str,
        params: Params,
        hidden: torch.Tensor,
        cell: torch.Tensor,
        previous: torch.Tensor,
    ) -> torch.Tensor:
        """One gate per coordinate, from the LSTM state, the weight and its last value: [n, 1]."""
        inputs = torch.cat([hidden, cell.unsqueeze(1), previous], 1)
        return torch.sigmoid(
            functional_call(getattr(self, name), params_under(params, f"{name}."), (inputs,))
        )

    def adapt(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        ways: int,
        steps: int | None = None,
    ) -> Predictor:
        self.check_ways(support_y, ways)
        cell = torch.cat(
            [params[name].flatten() for name in self.shapes]
        )  # c_0: the learner's weights
        support_loss = lambda weights: task_loss_and_score(
            self.run(self._unflatten(weights), support_x), support_y
        )[0]
        lstm = params_under(params, "lstm.")
        count, hidden = cell.numel(), self.lstm.hidden_size
        state = (cell.new_zeros(count, hidden), cell.new_zeros(count, hidden))
        rate, decay = cell.new_zeros(count, 1), cell.new_zeros(count, 1)
        for _ in range(self.inner_steps if steps is None else steps):
            gradient, loss = grad_and_value(support_loss)(cell.detach())
            features = torch.cat(
                [preprocess(gradient), preprocess(loss.detach()).expand(count, 2)], dim=1
            )
            state = lstm_cell(lstm, features, state)
            rate = self._gate("input_gate", params, state[0], cell, rate)
            decay = self._gate("forget_gate", params, state[0], cell, decay)
            cell = decay.squeeze(1) * cell - rate.squeeze(1) * gradient
        fast = self._unflatten(cell)
        return self.predictor(fast, support_x)
