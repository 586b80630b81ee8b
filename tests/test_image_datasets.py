"""The image benchmarks' loaders, on small replicas written in exactly their real layouts
(tests/image_replicas.py): splits, labels, pixels, clear errors, the cache, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2 as T
from conftest import CONFIGS, TINY
from hydra import compose, initialize_config_dir
from image_replicas import (
    CIFAR_SUPERCLASSES,
    SPLITS,
    write_cifar100,
    write_cub,
    write_image_folder,
    write_mini_imagenet_csv,
    write_mini_imagenet_pickle,
    write_tiered_imagenet,
)
from PIL import Image

from metarun.data.base import EpisodeShapeError
from metarun.data.cifar100 import FC100, CifarFS
from metarun.data.cub import CUB
from metarun.data.image_folder import ImageFolder
from metarun.data.mini_imagenet import MiniImageNet
from metarun.data.tiered_imagenet import TieredImageNet
from metarun.errors import ConfigError
from metarun.run import train

CLASSES = {"train": 4, "val": 2, "test": 3}


def class_images(part, name: str) -> torch.Tensor:
    """uint8 [n, H, W, 3] of the named class of a SplitImages, as the writers return them."""
    index = part.names.index(name)
    start = int(part.counts[:index].sum())
    return part.images[start : start + int(part.counts[index])].permute(0, 2, 3, 1)


def assert_loaded_as_written(dataset, written: dict) -> None:
    """Same classes in the same label order per split, the same pixels, no class in two splits."""
    seen: set[str] = set()
    for split in SPLITS:
        part = dataset.split(split)
        assert part.names == [name for name, _ in written[split]]
        assert not seen & set(part.names)
        seen |= set(part.names)
        for name, pixels in written[split]:
            assert torch.equal(class_images(part, name), torch.from_numpy(pixels)), (split, name)


def test_mini_imagenet_csv_layout_loads_the_written_images(tmp_path):
    written = write_mini_imagenet_csv(tmp_path, CLASSES, per_class=5, size=12)
    decoded = {
        split: [
            (
                name,
                np.stack(
                    [
                        np.asarray(Image.open(path))
                        for path in sorted((tmp_path / "images").glob(f"{name}*.jpg"))
                    ]
                ),
            )
            for name, _ in classes
        ]
        for split, classes in written.items()
    }
    assert_loaded_as_written(MiniImageNet(str(tmp_path), image_size=12), decoded)


def test_mini_imagenet_pickle_layout_loads_the_written_arrays(tmp_path):
    written = write_mini_imagenet_pickle(tmp_path, CLASSES, per_class=5, size=12)
    dataset = MiniImageNet(str(tmp_path), image_size=12)
    assert_loaded_as_written(dataset, written)
    assert [dataset.num_classes(split) for split in SPLITS] == [4, 2, 3]


def test_both_mini_imagenet_layouts_give_the_same_labels(tmp_path):
    write_mini_imagenet_csv(tmp_path / "csv", CLASSES, per_class=2, size=12)
    write_mini_imagenet_pickle(tmp_path / "pkl", CLASSES, per_class=2, size=12)
    for split in SPLITS:
        assert (
            MiniImageNet(str(tmp_path / "csv"), 12).split(split).names
            == MiniImageNet(str(tmp_path / "pkl"), 12).split(split).names
        )


@pytest.mark.parametrize("images", ["png", "npz"])
def test_tiered_imagenet_layouts_load_unequal_classes(tmp_path, images):
    written = write_tiered_imagenet(tmp_path, CLASSES, per_class=4, size=12, images=images)
    dataset = TieredImageNet(str(tmp_path), image_size=12)
    assert_loaded_as_written(dataset, written)
    assert dataset.split("train").counts.tolist() == [4, 5, 4, 5]


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cifar")
    return folder, write_cifar100(folder, per_class=3)


def test_cifar_fs_has_64_16_20_classes_with_their_images(cifar):
    folder, written = cifar
    dataset = CifarFS(str(folder), download=False)
    assert [dataset.num_classes(split) for split in SPLITS] == [64, 16, 20]
    assert "rocket" in dataset.split("test").names and "otter" in dataset.split("val").names
    assert_loaded_as_written(
        dataset,
        {split: [(name, written[name]) for name in dataset.split(split).names] for split in SPLITS},
    )


def test_fc100_splits_by_superclass_60_20_20(cifar):
    folder, _ = cifar
    dataset = FC100(str(folder), download=False)
    assert [dataset.num_classes(split) for split in SPLITS] == [60, 20, 20]
    superclass = {fine: coarse for coarse, fines in CIFAR_SUPERCLASSES.items() for fine in fines}
    groups = [{superclass[name] for name in dataset.split(split).names} for split in SPLITS]
    assert [len(group) for group in groups] == [12, 4, 4]
    assert groups[2] == {"aquatic_mammals", "insects", "medium_mammals", "people"}
    assert (
        not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
    )


def test_an_archive_without_a_held_out_class_is_refused(tmp_path):
    write_cifar100(tmp_path, per_class=2, rename={"rocket": "spaceship"})
    with pytest.raises(ConfigError, match="names no class 'rocket' of the cifar_fs split"):
        CifarFS(str(tmp_path), download=False).split("train")


def test_cub_splits_sorted_classes_by_remainder_and_crops_to_size(tmp_path):
    write_cub(tmp_path, classes=8, per_class=3, size=40)
    dataset = CUB(str(tmp_path), image_size=20, download=False)
    names = {split: [name.split(".")[0] for name in dataset.split(split).names] for split in SPLITS}
    assert names == {
        "train": ["001", "003", "005", "007"],
        "val": ["002", "006"],
        "test": ["004", "008"],
    }
    assert dataset.split("train").images.shape == (12, 3, 20, 20)


def test_image_folder_fraction_split_is_seeded_disjoint_and_lossless(tmp_path):
    written = write_image_folder(tmp_path, {f"c{i}": 3 + i % 3 for i in range(10)}, size=16)
    dataset = ImageFolder(str(tmp_path), image_size=16, fractions=[0.6, 0.2, 0.2], split_seed=3)
    assert [dataset.num_classes(split) for split in SPLITS] == [6, 2, 2]
    assert_loaded_as_written(
        dataset,
        {split: [(name, written[name]) for name in dataset.split(split).names] for split in SPLITS},
    )
    again = ImageFolder(str(tmp_path), image_size=16, fractions=[0.6, 0.2, 0.2], split_seed=3)
    other = ImageFolder(str(tmp_path), image_size=16, fractions=[0.6, 0.2, 0.2], split_seed=4)
    assert again.split("test").names == dataset.split("test").names
    assert any(other.split(s).names != dataset.split(s).names for s in SPLITS)


def test_image_folder_split_files_choose_the_classes(tmp_path):
    write_image_folder(tmp_path / "images", {name: 3 for name in "abcdef"}, size=8)
    files = {}
    for split, names in (("train", "abc"), ("val", "d"), ("test", "ef")):
        files[split] = tmp_path / f"{split}.txt"
        files[split].write_text("\n".join(names) + "\n")
    dataset = ImageFolder(str(tmp_path / "images"), image_size=8, split_files=files)
    assert [dataset.split(split).names for split in SPLITS] == [["a", "b", "c"], ["d"], ["e", "f"]]


def test_a_class_too_small_for_the_episode_is_named(tmp_path):
    write_image_folder(tmp_path, {"big": 6, "small": 2, "x": 6, "y": 6, "z": 6}, size=8)
    dataset = ImageFolder(str(tmp_path), image_size=8, fractions=[0.6, 0.2, 0.2], split_seed=0)
    split = next(s for s in SPLITS if "small" in dataset.split(s).names)
    with pytest.raises(EpisodeShapeError, match="Class 'small'.* has 2 images but task.shots"):
        dataset.sampler(split, 1, 1, 2, torch.device("cpu"))


def test_split_file_naming_a_missing_class_is_a_clear_error(tmp_path):
    write_image_folder(tmp_path / "images", {name: 2 for name in "abc"}, size=8)
    for split in SPLITS:
        (tmp_path / f"{split}.txt").write_text("a\n" if split != "test" else "nope\n")
    files = {split: tmp_path / f"{split}.txt" for split in SPLITS}
    with pytest.raises(ConfigError, match="split_files.test names 1 classes with no folder"):
        ImageFolder(str(tmp_path / "images"), 8, split_files=files).split("train")


def test_truncated_image_is_named(tmp_path):
    write_mini_imagenet_csv(tmp_path, CLASSES, per_class=2, size=12)
    victim = sorted((tmp_path / "images").iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:40])
    with pytest.raises(ConfigError, match=f"{victim.name} cannot be read"):
        MiniImageNet(str(tmp_path), 12).split("train")


def test_truncated_pickle_is_named(tmp_path):
    write_mini_imagenet_pickle(tmp_path, CLASSES, per_class=2, size=12)
    victim = tmp_path / "mini-imagenet-cache-val.pkl"
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.raises(ConfigError, match="mini-imagenet-cache-val.pkl cannot be read"):
        MiniImageNet(str(tmp_path), 12).split("train")


@pytest.mark.parametrize(
    "make, advice",
    [
        (lambda root: MiniImageNet(root, 12), "cannot download it"),
        (lambda root: TieredImageNet(root, 12), "cannot download it"),
        (lambda root: CifarFS(root, download=False), "dataset.download=true"),
        (lambda root: CUB(root, download=False), "dataset.download=true"),
    ],
)
def test_missing_files_say_where_to_get_them(tmp_path, make, advice):
    with pytest.raises(ConfigError, match=f"(?s)dataset.root.*{advice}|{advice}.*dataset.root"):
        make(str(tmp_path)).split("train")


def test_truncated_archive_is_named(tmp_path):
    write_cifar100(tmp_path, per_class=2)
    archive = tmp_path / "cifar-100-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[:2000])
    with pytest.raises(ConfigError, match="cifar-100-python.tar.gz cannot be extracted"):
        CifarFS(str(tmp_path), download=False).split("train")


def test_truncated_compressed_images_are_named(tmp_path):
    write_tiered_imagenet(tmp_path, CLASSES, per_class=2, size=8, images="npz")
    victim = tmp_path / "val_images.npz"
    victim.write_bytes(victim.read_bytes()[:300])
    with pytest.raises(ConfigError, match="val_images.npz cannot be read"):
        TieredImageNet(str(tmp_path), 8).split("train")


def test_missing_split_file_is_named(tmp_path):
    write_mini_imagenet_csv(tmp_path, CLASSES, per_class=2, size=12)
    (tmp_path / "test.csv").unlink()
    with pytest.raises(ConfigError, match="test.csv is missing"):
        MiniImageNet(str(tmp_path), 12).split("train")


def test_cache_is_mapped_and_reused_without_decoding(tmp_path, monkeypatch):
    write_image_folder(tmp_path, {f"c{i}": 3 for i in range(5)}, size=8)
    dataset = ImageFolder(str(tmp_path), image_size=8)
    first = dataset.split("train").images
    mapped = open("/proc/self/maps").read()
    assert all(str(raw) in mapped for raw in tmp_path.glob("*.uint8"))  # mapped, not copied

    def no_decoding(self, item):
        raise AssertionError("decoded again")

    monkeypatch.setattr(ImageFolder, "decode", no_decoding)
    assert torch.equal(ImageFolder(str(tmp_path), image_size=8).split("train").images, first)


def test_cache_is_rebuilt_when_a_source_file_changes(tmp_path):
    write_image_folder(tmp_path, {f"c{i}": 3 for i in range(5)}, size=8)
    dataset = ImageFolder(str(tmp_path), image_size=8)
    name = dataset.split("train").names[0]
    replacement = np.full((8, 8, 3), 7, dtype=np.uint8)
    Image.fromarray(replacement).save(tmp_path / name / "000.png")
    reloaded = ImageFolder(str(tmp_path), image_size=8).split("train")
    assert torch.equal(class_images(reloaded, name)[0], torch.from_numpy(replacement))
    assert len(list(tmp_path.glob("*.uint8"))) == 3  # one per split; the stale ones removed


def test_cache_is_rebuilt_for_another_image_size(tmp_path):
    write_image_folder(tmp_path, {f"c{i}": 3 for i in range(5)}, size=8)
    assert ImageFolder(str(tmp_path), image_size=8).split("val").images.shape[-1] == 8
    assert ImageFolder(str(tmp_path), image_size=4).split("val").images.shape[-1] == 4


@pytest.fixture
def augmented(tmp_path):
    write_image_folder(tmp_path, {f"c{i}": 4 for i in range(10)}, size=16)
    flip = T.Compose([T.RandomResizedCrop(16, antialias=True), T.RandomHorizontalFlip()])
    return ImageFolder(str(tmp_path), image_size=16, augment=flip), ImageFolder(str(tmp_path), 16)


def test_augmentation_transforms_training_images_reproducibly(augmented):
    with_augment, plain = augmented
    sample = lambda dataset: dataset.sampler("train", 3, 1, 2, torch.device("cpu")).sample(
        4, torch.Generator().manual_seed(5)
    )
    first, second, raw = sample(with_augment), sample(with_augment), sample(plain)
    assert torch.equal(first.query_x, second.query_x) and torch.equal(first.query_y, raw.query_y)
    assert first.query_x.shape == raw.query_x.shape and not torch.equal(first.query_x, raw.query_x)


def test_augmentation_leaves_validation_and_test_alone(augmented):
    with_augment, plain = augmented
    for split in ("val", "test"):
        args = (split, 2, 1, 1, torch.device("cpu"))
        generator = lambda: torch.Generator().manual_seed(0)
        assert torch.equal(
            with_augment.sampler(*args).sample(3, generator()).query_x,
            plain.sampler(*args).sample(3, generator()).query_x,
        )


def test_labelled_batches_of_unequal_classes_carry_their_labels(tmp_path):
    written = write_image_folder(tmp_path, {f"c{i}": 2 + i for i in range(10)}, size=8)
    dataset = ImageFolder(str(tmp_path), image_size=8)
    batch = dataset.labelled_batches("train", 64, torch.device("cpu")).sample(
        2, torch.Generator().manual_seed(0)
    )
    names = dataset.split("train").names
    for image, label in zip(batch.query_x.flatten(0, 1), batch.query_y.flatten()):
        pixels = (image * 255).round().to(torch.uint8).permute(1, 2, 0)
        assert any(torch.equal(pixels, torch.from_numpy(p)) for p in written[names[label]])


def test_a_run_trains_and_tests_on_a_replica_with_augmentation(tmp_path):
    write_mini_imagenet_pickle(tmp_path / "mini", CLASSES, per_class=6, size=16)
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(
            "train",
            [
                *TINY,
                "dataset=mini_imagenet",
                "augment=chen",
                f"dataset.root={tmp_path / 'mini'}",
                "dataset.image_size=16",
                "algo=protonet",
                "task.ways=2",
                "task.train_ways=3",
            ],
        )
    results = train(cfg, tmp_path / "run")
    assert results["episodes"] == 6 and 0.0 <= results["accuracy"]["mean"] <= 1.0
    assert (tmp_path / "mini" / "mini_imagenet_16px.pt").exists()


def test_preprocess_gives_a_new_image_what_the_cache_holds(tmp_path):
    write_cub(tmp_path, classes=4, per_class=2, size=40)
    dataset = CUB(str(tmp_path), image_size=20, download=False)
    first = sorted((tmp_path / "CUB_200_2011" / "images" / "001.Bird_0").iterdir())[0]
    cached = dataset.split("train").images[0].float() / 255.0
    assert torch.equal(dataset.preprocess(Image.open(first)), cached)


def test_a_short_run_on_learnable_images_is_clearly_above_chance(tmp_path):
    """Support and query labels agree end to end (files, cache, sampler, model): classes that
    differ by a colour pattern are told apart on test classes never seen in training."""
    write_image_folder(tmp_path / "images", {f"c{i:02d}": 8 for i in range(30)}, 16, noise=40)
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(
            "train",
            [
                *TINY,
                "dataset=image_folder",
                "dataset.image_size=16",
                f"dataset.root={tmp_path / 'images'}",
                "algo=protonet",
                "backbone.hidden=32",
                "trainer.iterations=20",
                "eval.episodes=40",
            ],
        )
    assert train(cfg, tmp_path / "run")["accuracy"]["mean"] > 0.6  # chance: 0.2
