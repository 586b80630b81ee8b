"""The LSTM meta-learner's update c_t = f_t * c_{t-1} - i_t * grad_t, checked with constant
gates."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from test_maml import classification_batch

from metarun.algorithms.functional import preprocess
from metarun.algorithms.lstm_meta_learner import LSTMMetaLearner
from metarun.backbones.conv4 import Conv4
from metarun.engine import Engine


def test_preprocessing_splits_magnitude_and_sign():
    x = torch.tensor([1.0, -(math.e**5), 1e-6, -1e-6])
    expected = torch.tensor(
        [[0.0, 1.0], [0.5, -1.0], [-1.0, math.e**10 * 1e-6], [-1.0, -(math.e**10) * 1e-6]]
    )
    torch.testing.assert_close(preprocess(x), expected)


def constant_gates(algo, rate: float, decay: float) -> None:
    with torch.no_grad():
        for gate, value in ((algo.input_gate, rate), (algo.forget_gate, decay)):
            gate.weight.zero_()
            gate.bias.fill_(math.log(value / (1 - value)))


def test_constant_gates_give_sgd_with_decay_and_its_meta_gradient():
    """With i_t = i and f_t = f the inner loop is c <- f c - i grad L(c), gradients entering as
    inputs, so d L_query(c_T) / d c_0 = f^T grad L_query(c_T)."""
    torch.manual_seed(0)
    rate, decay, steps = 0.3, 0.9, 3
    algo = LSTMMetaLearner(Conv4((1, 12, 12), hidden=4, blocks=2), 3, inner_steps=steps).double()
    constant_gates(algo, rate, decay)
    batch = classification_batch(tasks=1)
    sx, sy, qx, qy = batch.support_x[0], batch.support_y[0], batch.query_x[0], batch.query_y[0]

    model = algo.model
    weights = [p.detach().clone() for p in model.parameters()]
    for _ in range(steps):
        current = [w.clone().requires_grad_() for w in weights]
        out = torch.func.functional_call(
            model, dict(zip([n for n, _ in model.named_parameters()], current)), (sx,)
        )
        grads = torch.autograd.grad(F.cross_entropy(out, sy), current)
        weights = [decay * w - rate * g for w, g in zip(weights, grads)]
    final = [w.requires_grad_() for w in weights]
    names = [n for n, _ in model.named_parameters()]
    query_logits = torch.func.functional_call(model, dict(zip(names, final)), (qx,))
    query_grad = torch.autograd.grad(F.cross_entropy(query_logits, qy), final)

    torch.testing.assert_close(algo.adapt(algo.params(), sx, sy, ways=3)(qx), query_logits.detach())
    Engine("loop").meta_backward(algo, batch)
    for p, g in zip(model.parameters(), query_grad):
        torch.testing.assert_close(p.grad, decay**steps * g, rtol=1e-9, atol=1e-12)
    assert algo.lstm.weight_ih.grad is not None and algo.input_gate.bias.grad.abs() > 0
