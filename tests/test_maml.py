"""MAML's meta-gradient against a slow reference, finite differences and the Hessian term."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from reference import maml_meta_gradient
from torch.func import functional_call

from metarun.algorithms.anil import ANIL
from metarun.algorithms.maml import MAML
from metarun.algorithms.meta_sgd import MetaSGD
from metarun.backbones.conv4 import Conv4
from metarun.backbones.mlp import MLP
from metarun.engine import Engine
from metarun.episode import Episode


def classification_batch(tasks=3, ways=3, shots=2, queries=2, size=12):
    g = torch.Generator().manual_seed(1)
    labels = lambda n: torch.arange(ways).repeat_interleave(n).repeat(tasks, 1)
    return Episode(
        torch.rand(tasks, ways * shots, 1, size, size, generator=g, dtype=torch.float64),
        labels(shots),
        torch.rand(tasks, ways * queries, 1, size, size, generator=g, dtype=torch.float64),
        labels(queries),
        ways,
    )


def regression_batch(tasks=4, points=5):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(tasks, 2 * points, 1, generator=g, dtype=torch.float64) * 10 - 5
    y = torch.sin(x) * 2
    return Episode(x[:, :points], y[:, :points], x[:, points:], y[:, points:], 1)


def engine_gradient(algo, batch, mode, **options):
    algo.zero_grad()
    engine = Engine(mode, **options)
    engine.prepare(algo)
    engine.meta_backward(algo, batch)
    return {name: p.grad.clone() for name, p in algo.named_parameters()}


MAX_POOLED = {}
STRIDED = {"downsample": "stride", "average_pool": True}  # MAML's Omniglot model


@pytest.mark.parametrize("mode, channels_last", [("loop", False), ("vmap", False), ("loop", True)])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("downsampling", [MAX_POOLED, STRIDED], ids=["maxpool", "stride"])
def test_conv4_with_batchnorm_matches_reference_loop(
    mode, channels_last, first_order, downsampling
):
    torch.manual_seed(0)
    algo = MAML(
        Conv4((1, 12, 12), hidden=4, blocks=2, **downsampling),
        3,
        inner_lr=0.4,
        inner_steps=2,
        first_order=first_order,
    ).double()
    batch = classification_batch()
    expected = maml_meta_gradient(algo, batch, 0.4, 2, first_order)
    actual = engine_gradient(algo, batch, mode, channels_last=channels_last)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-9, atol=1e-11, msg=name)


def test_mlp_meta_gradient_matches_finite_differences():
    torch.manual_seed(0)
    algo = MAML(MLP((1,), hidden=[6, 6]), 1, inner_lr=0.05, inner_steps=1).double()
    batch = regression_batch()
    analytic = engine_gradient(algo, batch, "vmap")

    def meta_loss() -> float:
        with torch.no_grad():
            return Engine("loop").scores(algo, batch).mean().item()

    eps = 1e-6
    for name, param in algo.named_parameters():
        flat = param.data.view(-1)
        for index in range(0, flat.numel(), max(1, flat.numel() // 4)):
            original = flat[index].item()
            flat[index] = original + eps
            up = meta_loss()
            flat[index] = original - eps
            down = meta_loss()
            flat[index] = original
            numeric = (up - down) / (2 * eps)
            assert abs(numeric - analytic[name].view(-1)[index].item()) < 1e-6, (name, index)


def test_first_order_differs_by_the_hessian_term():
    """For one step, g_2nd = g_1st - inner_lr * H_support(theta) @ g_1st (per task)."""
    torch.manual_seed(0)
    algo = MAML(MLP((1,), hidden=[6, 6]), 1, inner_lr=0.05, inner_steps=1).double()
    batch = regression_batch(tasks=1)
    second = engine_gradient(algo, batch, "loop")
    algo.first_order = True
    first = engine_gradient(algo, batch, "loop")
    params = {n: p.detach().requires_grad_(True) for n, p in algo.named_parameters()}
    support = F.mse_loss(functional_call(algo, params, (batch.support_x[0],)), batch.support_y[0])
    support_grad = torch.autograd.grad(support, list(params.values()), create_graph=True)
    product = sum((g * first[n]).sum() for n, g in zip(params, support_grad))
    hessian_times_first = dict(zip(params, torch.autograd.grad(product, list(params.values()))))
    for name in params:
        expected = first[name] - 0.05 * hessian_times_first[name]
        torch.testing.assert_close(second[name], expected, rtol=1e-9, atol=1e-12, msg=name)
    assert any((second[n] - first[n]).abs().max() > 1e-6 for n in params), (
        "the term is not zero here"
    )


def test_bf16_precision_stays_close_to_the_fp32_meta_gradient():
    torch.manual_seed(0)
    algo = MAML(Conv4((1, 12, 12), hidden=8, blocks=2), 3, inner_lr=0.4, inner_steps=1)
    batch = classification_batch()
    batch = Episode(
        batch.support_x.float(), batch.support_y, batch.query_x.float(), batch.query_y, 3
    )
    expected = maml_meta_gradient(algo, batch, 0.4, 1, first_order=False)
    engine = Engine("loop", precision="bf16", channels_last=True)
    engine.prepare(algo)
    algo.zero_grad()
    engine.meta_backward(algo, batch)
    actual = torch.cat([p.grad.flatten() for p in algo.parameters()])
    reference = torch.cat([expected[name].flatten() for name, _ in algo.named_parameters()])
    relative_error = (actual - reference).norm() / reference.norm()
    assert relative_error < 0.05, relative_error
    assert relative_error > 0, "bf16 really ran (its result is not bit-identical to fp32)"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["loop", "vmap"])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("downsampling", [MAX_POOLED, STRIDED], ids=["maxpool", "stride"])
def test_compiled_engine_matches_reference_loop(mode, first_order, downsampling):
    torch.manual_seed(0)
    algo = MAML(
        Conv4((1, 12, 12), hidden=4, blocks=1, **downsampling),
        3,
        inner_lr=0.4,
        inner_steps=1,
        first_order=first_order,
    ).double()
    batch = classification_batch()
    expected = maml_meta_gradient(algo, batch, 0.4, 1, first_order)
    actual = engine_gradient(algo, batch, mode, compile=True)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-7, atol=1e-9, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["loop", "vmap"])
@pytest.mark.parametrize("algorithm", [ANIL, MetaSGD])
def test_algorithms_compile_auto_may_compile_match_their_plain_loop(algorithm, mode):
    assert algorithm.capabilities.compiles
    torch.manual_seed(0)
    algo = algorithm(Conv4((1, 12, 12), hidden=4, blocks=1), 3, inner_lr=0.4, inner_steps=1)
    batch = classification_batch()
    expected = engine_gradient(algo.double(), batch, "loop")
    actual = engine_gradient(algo, batch, mode, compile=True)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-7, atol=1e-9, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_cuda_graphs_match_the_plain_vmapped_meta_gradient():
    torch.manual_seed(0)
    algo = MAML(Conv4((1, 12, 12), hidden=4, blocks=2), 3, inner_lr=0.4, inner_steps=1).cuda()
    batch = classification_batch()
    batch = Episode(*(t.cuda() for t in batch.tensors), batch.ways)
    batch = Episode(
        batch.support_x.float(), batch.support_y, batch.query_x.float(), batch.query_y, batch.ways
    )
    expected = engine_gradient(algo, batch, "vmap")
    for _ in range(3):  # recorded on an early call, replayed after
        actual = engine_gradient(algo, batch, "vmap", compile=True, compile_mode="reduce-overhead")
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
def test_compiled_vmap_matches_reference_loop():
    torch.manual_seed(0)
    algo = MAML(MLP((1,), hidden=[6, 6]), 1, inner_lr=0.05, inner_steps=2).double()
    batch = regression_batch()
    expected = maml_meta_gradient(algo, batch, 0.05, 2, first_order=False)
    actual = engine_gradient(algo, batch, "vmap", compile=True)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-7, atol=1e-9, msg=name)


def test_conv4_pools_before_relu_without_changing_the_function():
    torch.manual_seed(0)
    net = Conv4((1, 12, 12), hidden=4, blocks=2)
    x = torch.randn(5, 1, 12, 12)
    conventional = x
    for conv, norm in ((net.features[0], net.features[1]), (net.features[4], net.features[5])):
        conventional = F.max_pool2d(F.relu(norm(conv(conventional))), 2)
    torch.testing.assert_close(net(x), conventional.flatten(1), rtol=0, atol=0)


def test_strided_conv4_is_the_maml_papers_omniglot_model():
    """Stride-2 convolutions, BatchNorm on the batch, ReLU, the last map averaged: 28 -> 14 ->
    7 -> 4 -> 2 -> one value per channel, as the paper's code (and learn2learn's OmniglotCNN)."""
    torch.manual_seed(0)
    net = Conv4((1, 28, 28), hidden=4, **STRIDED)
    x = torch.randn(5, 1, 28, 28)
    conventional, sides = x, []
    for index in range(4):
        conv, norm = net.features[3 * index], net.features[3 * index + 1]
        conventional = F.relu(norm(conv(conventional)))
        sides.append(conventional.shape[-1])
    assert sides == [14, 7, 4, 2]
    assert net.out_features == 4
    torch.testing.assert_close(net(x), conventional.mean(dim=(2, 3)))
