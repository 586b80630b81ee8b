"""ResNet-12 (and torchvision's ResNet-18) as metarun backbones: size, shape, MAML's meta-gradient
through them, every BatchNorm mode and DropBlock inside the engines."""

from __future__ import annotations

import pytest
import torch
from conftest import CONFIGS
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from reference import maml_meta_gradient
from torchvision.ops import drop_block2d

from metarun.algorithms.maml import MAML
from metarun.backbones.resnet12 import DropBlock, ResNet12
from metarun.backbones.resnet18 import ResNet18
from metarun.engine import Engine
from metarun.episode import Episode
from metarun.errors import ConfigError
from metarun.run import train

SMALL = dict(channels=[3, 4, 5, 6])


def test_resnet12_has_about_12_4_million_parameters_and_640_channels_at_84():
    network = ResNet12((3, 84, 84))
    assert 12.3e6 < sum(p.numel() for p in network.parameters()) < 12.5e6
    assert network.out_shape == (640, 5, 5)
    assert network(torch.rand(2, 3, 84, 84)).shape == (2, 640 * 5 * 5) == (2, network.out_features)


def test_resnet12_average_pool_gives_640_features():
    network = ResNet12((3, 84, 84), average_pool=True)
    assert network(torch.rand(2, 3, 84, 84)).shape == (2, 640) == (2, network.out_features)


def test_resnet18_embeds_into_512_features():
    network = ResNet18((3, 32, 32))
    assert network(torch.rand(2, 3, 32, 32)).shape == (2, 512) == (2, network.out_features)


def test_images_too_small_for_four_poolings_are_refused():
    with pytest.raises(ConfigError, match="raise dataset.image_size to 16"):
        ResNet12((3, 12, 12))


def test_an_even_drop_block_size_is_refused():
    with pytest.raises(ConfigError, match="backbone.drop_block_size=4"):
        ResNet12((3, 84, 84), drop_rate=0.1, drop_block_size=4)


def episode(tasks=2, ways=3, shots=1, queries=2, size=16):
    g = torch.Generator().manual_seed(0)
    labels = lambda n: torch.arange(ways).repeat_interleave(n).repeat(tasks, 1)
    images = lambda n: torch.rand(tasks, ways * n, 3, size, size, generator=g, dtype=torch.float64)
    return Episode(images(shots), labels(shots), images(queries), labels(queries), ways)


def assert_engine_matches_reference(algo, batch, steps: int, mode: str, rtol: float) -> None:
    """The engine's second-order MAML meta-gradient (inner rate 0.1) equals the slow reference."""
    expected = maml_meta_gradient(algo, batch, 0.1, steps, first_order=False)
    algo.zero_grad()
    engine = Engine(mode)
    engine.prepare(algo)
    engine.meta_backward(algo, batch)
    for name, parameter in algo.named_parameters():
        torch.testing.assert_close(parameter.grad, expected[name], rtol=rtol, atol=rtol / 100)


@pytest.mark.parametrize("mode", ["loop", "vmap"])
def test_maml_meta_gradient_through_resnet12_matches_the_reference(mode):
    torch.manual_seed(0)
    algo = MAML(ResNet12((3, 16, 16), **SMALL), 3, inner_lr=0.1, inner_steps=2).double()
    assert_engine_matches_reference(algo, episode(), 2, mode, rtol=1e-8)


@pytest.mark.slow  # torchvision's ResNet-18 has 11 M parameters at any input size
@pytest.mark.parametrize("mode", ["loop", "vmap"])
def test_maml_meta_gradient_through_resnet18_matches_the_reference(mode):
    torch.manual_seed(0)
    algo = MAML(ResNet18((3, 32, 32)), 3, inner_lr=0.1, inner_steps=1).double()
    assert_engine_matches_reference(algo, episode(shots=2, size=32), 1, mode, rtol=1e-7)


RESNET = ["backbone=resnet12", "backbone.channels=[4,4,4,4]"]


@pytest.fixture
def tiny_cfg():
    """The tiny TinyImages config (tests/conftest.py) with ResNet-12 in place of Conv-4."""

    def make(*overrides: str, backbone: list[str] = RESNET):
        tiny = ["debug=tiny"]
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose("train", [*tiny, *backbone, *overrides])
        with open_dict(cfg):
            cfg.dataset = {"_target_": "synthetic.TinyImages"}
        return cfg

    return make


@pytest.mark.parametrize("bn", ["transductive", "support", "support_plus_one", "running"])
@pytest.mark.parametrize("algo", ["maml", "protonet"])
def test_resnet12_trains_and_tests_in_every_bn_mode(tiny_cfg, tmp_path, bn, algo):
    results = train(tiny_cfg(f"algo={algo}", f"bn={bn}"), tmp_path)
    assert 0.0 <= results["accuracy"]["mean"] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("bn", ["transductive", "support", "support_plus_one", "running"])
def test_resnet18_trains_and_tests_in_every_bn_mode(tiny_cfg, tmp_path, bn):
    cfg = tiny_cfg("algo=protonet", f"bn={bn}", backbone=["backbone=resnet18"])
    assert 0.0 <= train(cfg, tmp_path)["accuracy"]["mean"] <= 1.0


@pytest.mark.parametrize("engine", ["loop", "vmap"])
def test_dropblock_trains_inside_either_engine(tiny_cfg, tmp_path, engine):
    cfg = tiny_cfg("backbone.drop_rate=0.1", "algo=maml", f"engine={engine}")
    assert 0.0 <= train(cfg, tmp_path)["accuracy"]["mean"] <= 1.0


def test_dropblock_drops_as_much_as_torchvisions_and_only_in_training():
    x = torch.ones(4000, 2, 10, 10)
    torch.manual_seed(0)
    ours = DropBlock(0.3, 5)(x)
    theirs = drop_block2d(x, 0.3, 5)
    assert abs((ours == 0).float().mean() - (theirs == 0).float().mean()) < 0.005
    torch.testing.assert_close(ours.mean(), torch.tensor(1.0))  # rescaled to keep the mean
    assert torch.equal(DropBlock(0.3, 5).eval()(x), x)
