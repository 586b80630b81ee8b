"""The outer loop's own settings, independent of any algorithm."""

from __future__ import annotations

import torch
from conftest import TINY

from metarun import checkpoint, run
from metarun.build import build, build_algorithm
from metarun.runtime import seed_everything


def first_update_norm(make_cfg, run_dir, *overrides: str) -> float:
    """Norm of the change of all weights in one plain SGD step of learning rate 1."""
    cfg = make_cfg(
        *TINY,
        "algo=protonet",
        "optimizer=sgd",
        "optimizer.lr=1.0",
        "trainer.iterations=1",
        "trainer.val_every=100",
        *overrides,
    )
    seed_everything(cfg.seed)
    before = build_algorithm(cfg, build("dataset", cfg.dataset)).state_dict()
    run.train(cfg, run_dir)
    after = checkpoint.load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    return torch.cat([(after[name] - before[name]).flatten() for name in after]).norm().item()


def test_clip_grad_norm_bounds_each_update(make_cfg, tmp_path):
    assert first_update_norm(make_cfg, tmp_path / "free") > 0.01
    assert first_update_norm(
        make_cfg, tmp_path / "clipped", "trainer.clip_grad_norm=0.01"
    ) <= 0.01 * (1 + 1e-5)
