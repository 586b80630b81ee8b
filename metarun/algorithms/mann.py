"""Memory-augmented neural network (Santoro, Bartunov, Botvinick, Wierstra, Lillicrap 2016,
arXiv:1605.06065): an LSTM controller reads an external memory by content (softmax over cosine
similarities, several read heads) and writes by least-recently-used access: head i adds its own
add vector at an interpolation, gated by the controller, between the slots it read last step and
the i-th least used slot.

Each step's input is the example, a label and the previous step's reads; the prediction reads
the controller's output and this step's reads. `read_heads=0` is the paper's LSTM baseline: the
controller alone. All tasks of a meta-batch run as one batched recurrence under the vmap engine.

The memory follows the reimplementation of tristandeleu/ntm-one-shot (`mann/model.py`), written to
reproduce the paper: keys and add vectors are separate tanh outputs per head, the one least used
slot is cleared before the write (the paper's Sec. 3.2 and both public reimplementations clear one
slot, not one per head), and the first step's read and usage weights are one-hot at slot 0. Ties
in usage go to the lower slot (a stable sort); the reference's Theano argsort leaves them to its
sorting algorithm. Deviation: the reference trains with Adam 1e-3, the paper (and our preset) with
RMSprop 1e-4.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from metarun.algorithms.functional import Params, lstm_update
from metarun.algorithms.sequence import SequenceLearner
from metarun.backbones import Backbone
from metarun.errors import ConfigError

INITIAL_MEMORY = 1e-6  # a small constant: every slot has a direction for the cosine


class Memory(NamedTuple):
    contents: torch.Tensor  # [B, slots, width]
    read_weights: torch.Tensor  # [B, heads, slots], of the last step
    usage: torch.Tensor  # [B, slots]


def least_used(usage: torch.Tensor, heads: int) -> torch.Tensor:
    """Row i one-hot at the i-th least used slot (ties to the lower slot): [B, heads, slots]."""
    order = usage.argsort(dim=-1, stable=True)[..., :heads]  # [B, heads]
    return F.one_hot(order, usage.shape[-1]).to(usage.dtype)


def memory_step(
    memory: Memory, keys: torch.Tensor, adds: torch.Tensor, gates: torch.Tensor, decay: float
) -> tuple[Memory, torch.Tensor]:
    """Writes the add vectors `adds` [B, heads, width] by LRU access with write gates [B, heads]
    in (0, 1), then reads by content with `keys` [B, heads, width]; returns the new memory and
    the reads [B, heads, width].

    Head i's write weights are sigma_i*w_read_i(t-1) + (1 - sigma_i)*w_lu_i(t-1), w_lu_i one-hot
    at the i-th least used slot; the least used slot is cleared before the write; usage decays
    by `decay` and adds this step's read and write weights.
    """
    unused = least_used(memory.usage, keys.shape[1])  # from the previous step's usage
    gate = gates.unsqueeze(-1)
    write = gate * memory.read_weights + (1 - gate) * unused  # [B, heads, slots]
    cleared = 1 - unused[:, 0]  # [B, slots]
    contents = memory.contents * cleared.unsqueeze(-1) + write.transpose(1, 2) @ adds
    similarity = F.normalize(keys, dim=-1) @ F.normalize(contents, dim=-1).transpose(1, 2)
    read_weights = torch.softmax(similarity, dim=-1)  # [B, heads, slots]
    usage = decay * memory.usage + read_weights.sum(1) + write.sum(1)
    return Memory(contents, read_weights, usage), read_weights @ contents


class MANN(SequenceLearner):
    def __init__(
        self,
        backbone: Backbone,
        out_features: int,
        *,
        hidden: int = 200,
        memory_slots: int = 128,
        memory_width: int = 40,
        read_heads: int = 4,
        usage_decay: float = 0.95,
    ) -> None:
        super().__init__()
        if read_heads < 0 or read_heads > memory_slots or min(hidden, memory_width) < 1:
            raise ConfigError(
                f"algo.read_heads={read_heads} must be between 0 (no memory: the LSTM baseline) "
                f"and algo.memory_slots={memory_slots}; algo.hidden and algo.memory_width must "
                "be at least 1."
            )
        self.model, self.out_features = backbone, out_features
        self.slots, self.width, self.heads, self.decay = (
            memory_slots,
            memory_width,
            read_heads,
            usage_decay,
        )
        reads = read_heads * memory_width
        self.controller = nn.LSTMCell(backbone.out_features + out_features + reads, hidden)
        self.keys = nn.Linear(hidden, reads) if read_heads else None
        self.adds = nn.Linear(hidden, reads) if read_heads else None
        self.gates = nn.Linear(hidden, read_heads) if read_heads else None
        self.output = nn.Linear(hidden + reads, out_features)

    def initial_memory(self, batch: int, like: torch.Tensor) -> Memory:
        """Contents a small constant; read and usage weights one-hot at slot 0, as in the
        reference, so the first write's gated half lands in slot 0."""
        first = F.one_hot(like.new_zeros(batch, dtype=torch.long), self.slots).to(like.dtype)
        return Memory(
            like.new_full((batch, self.slots, self.width), INITIAL_MEMORY),
            first.unsqueeze(1).expand(-1, self.heads, -1),
            first,
        )

    def read(self, params: Params, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The recurrence is kept to what depends on the previous step: the controller's input
        weights are applied to every step's example and label in one product beforehand, the
        output layer to every step's state afterwards."""
        batch, steps = features.shape[:2]
        weight_ih, weight_hh = params["controller.weight_ih"], params["controller.weight_hh"]
        given = features.shape[-1] + labels.shape[-1]
        inputs = F.linear(
            torch.cat([features, labels], dim=-1),
            weight_ih[:, :given],
            params["controller.bias_ih"] + params["controller.bias_hh"],
        )
        hidden = cell = features.new_zeros(batch, weight_hh.shape[-1])
        reads = features.new_zeros(batch, self.heads * self.width)
        memory, states = self.initial_memory(batch, features), []
        from_reads = weight_ih[:, given:].T  # the previous step's reads -> gate pre-activations
        for step in range(steps):
            gates = inputs[:, step] + hidden @ weight_hh.T
            if self.heads:
                gates = gates + reads @ from_reads
            hidden, cell = lstm_update(gates, cell)
            if self.heads:
                keys = torch.tanh(F.linear(hidden, params["keys.weight"], params["keys.bias"]))
                adds = torch.tanh(F.linear(hidden, params["adds.weight"], params["adds.bias"]))
                writing = torch.sigmoid(  # [B, heads]: how much each head writes where it read
                    F.linear(hidden, params["gates.weight"], params["gates.bias"])
                )
                shape = (batch, self.heads, self.width)
                memory, read = memory_step(
                    memory, keys.view(shape), adds.view(shape), writing, self.decay
                )
                reads = read.flatten(1)
            states.append(torch.cat([hidden, reads], dim=-1))
        return F.linear(torch.stack(states, dim=1), params["output.weight"], params["output.bias"])
