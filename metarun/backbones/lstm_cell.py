"""One nn.LSTMCell step computed from a parameter dict.

Written out because aten::lstm_cell has no torch.func.vmap batching rule, so an
algorithm that steps an LSTM inside `adapt` could not run under the vmap engine.
The parameters are those of an nn.LSTMCell (its initialisation and names are kept).
"""

from __future__ import annotations

import torch


def lstm_cell(params: dict[str, torch.Tensor], x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden, cell) after reading x [B, in] from state ([B, H], [B, H]), as nn.LSTMCell."""
    hidden, cell = state
    gates = (x @ params["weight_ih"].T + params["bias_ih"] + hidden @ params["weight_hh"].T + params["bias_hh"])
    input_gate, forget_gate, candidate, output_gate = gates.chunk(4, dim=-1)
    cell = torch.sigmoid(forget_gate) * cell + torch.sigmoid(input_gate) * torch.tanh(candidate)
    return torch.sigmoid(output_gate) * torch.tanh(cell), cell
