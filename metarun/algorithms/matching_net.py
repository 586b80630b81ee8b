"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu, Wierstra 2016, arXiv:1606.04080):
a query's class distribution is an attention-weighted sum of the support labels, the
attention a softmax over cosine similarities of embeddings.

With `fce=true` the embeddings are "fully conditioned" on the support set: a
bidirectional LSTM re-reads the support embeddings (g), and an attention LSTM refines each
query's embedding over `fce_steps` reads of the support set (f). The paper's LSTM state
[h, r] is passed as the sum h + r so one LSTM cell of the embedding's width serves.
`temperature` divides the similarities; towards zero the attention becomes 1-nearest-neighbour.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metarun.algorithms.base import Algorithm, Predictor
from metarun.algorithms.functional import Params, lstm_cell, params_under
from metarun.backbones import Backbone
from metarun.errors import ConfigError


class MatchingNet(Algorithm):
    def __init__(
        self,
        backbone: Backbone,
        out_features: int,
        *,
        fce: bool = False,
        fce_steps: int = 5,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if temperature <= 0 or fce_steps < 1:
            raise ConfigError(
                f"algo.temperature must be > 0 and algo.fce_steps >= 1 (got {temperature}, "
                f"{fce_steps})."
            )
        self.model = backbone
        self.fce, self.fce_steps, self.temperature = fce, fce_steps, temperature
        width = backbone.out_features
        # The bidirectional LSTM is two cells stepped over the support set (see lstm_cell).
        self.support_forward = nn.LSTMCell(width, width) if fce else None
        self.support_backward = nn.LSTMCell(width, width) if fce else None
        self.query_lstm = nn.LSTMCell(width, width) if fce else None

    def attention(self, queries: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        """[Q, N] softmax over the support set of cosine similarity / temperature."""
        similarity = F.normalize(queries, dim=-1) @ F.normalize(support, dim=-1).T
        return torch.softmax(similarity / self.temperature, dim=-1)

    def _lstm_states(self, params: Params, name: str, sequence: torch.Tensor) -> torch.Tensor:
        """Hidden states of LSTM cell `name` read along the sequence [N, D]: [N, D]."""
        cell_params = params_under(params, f"{name}.")
        hidden = cell = sequence.new_zeros(1, sequence.shape[-1])
        states = []
        for item in sequence:
            hidden, cell = lstm_cell(cell_params, item.unsqueeze(0), (hidden, cell))
            states.append(hidden)
        return torch.cat(states)

    def _support_context(self, params: Params, support: torch.Tensor) -> torch.Tensor:
        """g(x_i, S) = g'(x_i) + forward and backward LSTM states over the support set: [N, D]."""
        forward = self._lstm_states(params, "support_forward", support)
        backward = self._lstm_states(params, "support_backward", support.flip(0)).flip(0)
        return support + forward + backward

    def _query_context(
        self, params: Params, queries: torch.Tensor, support: torch.Tensor
    ) -> torch.Tensor:
        """f(x, S): `fce_steps` attention-LSTM reads of the support set, starting from f'(x): [Q,
        D]."""
        cell_params = params_under(params, "query_lstm.")
        hidden, cell = queries, torch.zeros_like(queries)
        for _ in range(self.fce_steps):
            read = torch.softmax(hidden @ support.T, dim=-1) @ support
            hidden, cell = lstm_cell(cell_params, queries, (hidden + read, cell))
            hidden = hidden + queries
        return hidden

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
        if self.fce:
            support = self._support_context(params, support)
        labels = F.one_hot(support_y, ways).to(support.dtype)  # [ways*shots, ways]

        def log_probabilities(query_x: torch.Tensor) -> torch.Tensor:
            queries = self.on_queries(lambda x: self.run(params, x), support_x, query_x)  # [Q, D]
            if self.fce:
                queries = self._query_context(params, queries, support)
            return (self.attention(queries, support) @ labels).clamp_min(1e-12).log()  # [Q, ways]

        return log_probabilities
