"""The Omniglot reader against the official release's known sizes."""

from __future__ import annotations

import zipfile

import pytest
import torch
from PIL import Image

from metarun.data.omniglot import Omniglot, cache_path
from metarun.errors import ConfigError


def test_full_dataset_is_read(data_root):
    names, images = Omniglot(str(data_root), download=False)._load()
    assert len(names) == 1623
    assert images.shape == (1623, 20, 1, 28, 28) and images.dtype == torch.uint8
    assert images.shape[0] * images.shape[1] == 32460


@pytest.mark.parametrize("split, classes", [("train", 4112), ("val", 688), ("test", 1692)])
def test_vinyals_split_sizes(data_root, split, classes):
    # 1028 / 172 / 423 characters, each in four rotations
    assert Omniglot(str(data_root), download=False).split_images(split).shape[0] == classes


def test_lake_split_uses_evaluation_alphabets_for_test(data_root):
    dataset = Omniglot(str(data_root), split="lake", download=False)
    assert dataset.split_images("test").shape[0] == 659
    assert dataset.split_images("train").shape[0] + dataset.split_images("val").shape[0] == 964


def test_preprocess_matches_the_cached_pixels(data_root):
    dataset = Omniglot(str(data_root), download=False)
    names, images = dataset._load()
    with zipfile.ZipFile(data_root / "omniglot" / "images_background.zip") as archive:
        member = sorted(m for m in archive.namelist() if m.endswith(".png"))[0]
        image = Image.open(archive.open(member))
        image.load()
    assert image.size == (105, 105)
    pixels = dataset.preprocess(image)
    assert pixels.shape == (1, 28, 28)
    assert torch.allclose(pixels, images[0, 0].float() / 255)
    assert pixels.mean() < 0.5, "strokes are bright on a dark background"


def test_missing_data_names_the_folder_and_the_setting(tmp_path):
    with pytest.raises(ConfigError, match=r"dataset.root") as error:
        Omniglot(str(tmp_path), download=False).split_images("train")
    assert str(tmp_path) in str(error.value)


@pytest.mark.slow
def test_unreadable_cache_is_rebuilt(data_root, tmp_path, monkeypatch):
    read_only = tmp_path / "data" / "omniglot"  # the official files, in a folder without write bits
    read_only.mkdir(parents=True)
    for name in ("images_background.zip", "images_evaluation.zip", "splits"):
        (read_only / name).symlink_to(data_root / "omniglot" / name)
    read_only.chmod(0o555)
    monkeypatch.setenv("METARUN_CACHE", str(tmp_path / "cache"))
    dataset = Omniglot(str(tmp_path / "data"), download=False)
    cache = cache_path(dataset.folder, dataset.image_size)
    assert cache.parent == tmp_path / "cache", "a read-only data folder keeps its cache elsewhere"
    cache.parent.mkdir()
    cache.write_bytes(b"not a tensor file")
    names, images = dataset._load()
    assert len(names) == 1623 and images.shape[0] == 1623
    assert torch.load(cache, weights_only=True)["images"].shape == images.shape
