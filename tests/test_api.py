"""metarun.load: a trained model adapts to a user's own task, from raw official files."""

from __future__ import annotations

import zipfile

import pytest
import torch
from conftest import TINY
from PIL import Image

import metarun
from metarun import run


def official_drawings(data_root, characters=3, per_character=3):
    """Raw 105x105 PNGs of the first characters of the background set, as PIL images."""
    with zipfile.ZipFile(data_root / "omniglot" / "images_background.zip") as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".png"))
        by_character: dict[str, list[str]] = {}
        for name in names:
            by_character.setdefault(name.rsplit("/", 1)[0], []).append(name)
        chosen = list(by_character.values())[:characters]
        images = []
        for files in chosen:
            drawings = []
            for name in files[:per_character]:
                image = Image.open(archive.open(name))
                image.load()
                drawings.append(image)
            images.append(drawings)
    return images


@pytest.mark.parametrize("algo", ["maml", "fomaml", "protonet", "snail", "mann", "meta_net"])
def test_load_adapt_predict_on_raw_omniglot_images(make_cfg, tmp_path, data_root, algo):
    cfg = make_cfg(f"algo={algo}", "task.ways=3", "eval.batch_tasks=2", *TINY)
    run.train(cfg, tmp_path)
    model = metarun.load(tmp_path)
    drawings = official_drawings(data_root)
    support_x = torch.stack([model.preprocess(d[0]) for d in drawings])  # [3, 1, 28, 28]
    query_x = torch.stack([model.preprocess(img) for d in drawings for img in d[1:]])
    learner = model.adapt(support_x, torch.arange(3))
    logits = learner.predict(query_x)
    assert logits.shape == (6, 3) and torch.isfinite(logits).all()
    from_file = metarun.load(tmp_path / "checkpoints" / "best.pt")
    assert torch.equal(from_file.adapt(support_x, torch.arange(3)).predict(query_x), logits)


def test_load_adapt_predict_on_sinusoid(make_cfg, tmp_path):
    cfg = make_cfg(
        "experiment=maml_sinusoid",
        "trainer.iterations=20",
        "trainer.log_every=10",
        "trainer.val_every=20",
        "trainer.val_episodes=10",
        "trainer.ckpt_every=20",
        "eval.episodes=10",
        "device=cpu",
    )
    run.train(cfg, tmp_path)
    model = metarun.load(tmp_path)
    xs = torch.stack([model.preprocess(x) for x in (-2.0, 0.0, 1.0, 3.0)])  # [4, 1]
    learner = model.adapt(xs, torch.sin(xs), steps=5)
    assert learner.predict(torch.zeros(7, 1)).shape == (7, 1)
