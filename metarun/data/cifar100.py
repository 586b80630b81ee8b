"""CIFAR-FS (Bertinetto et al., ICLR 2019) and FC100 (Oreshkin et al., NeurIPS 2018): few-shot
splits of CIFAR-100's 100 classes (600 32x32 images each, its train and test files pooled).

CIFAR-FS splits the classes at random, 64/16/20 (the published class lists below); FC100 splits
them by superclass, 12/4/4 superclasses (60/20/20 classes), so test classes share no superclass
with training ones. Both read the official python archive (cifar-100-python.tar.gz, md5
eb9058c3a382ffc7106e4002c42a8d85), downloaded from its official address when missing.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from metarun.data.class_images import SPLITS, ClassImages, fetch_archive, read_pickle
from metarun.errors import ConfigError

URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
ARCHIVE, FOLDER = "cifar-100-python.tar.gz", "cifar-100-python"
CIFAR_FS_HELD_OUT: dict[str, tuple[str, ...]] = {
    "val": (
        "beaver",
        "otter",
        "flatfish",
        "shark",
        "lamp",
        "television",
        "beetle",
        "butterfly",
        "sea",
        "camel",
        "cattle",
        "crab",
        "crocodile",
        "maple_tree",
        "motorcycle",
        "tractor",
    ),
    "test": (
        "whale",
        "poppy",
        "rose",
        "sweet_pepper",
        "telephone",
        "bed",
        "table",
        "wardrobe",
        "leopard",
        "plain",
        "chimpanzee",
        "fox",
        "snail",
        "worm",
        "baby",
        "man",
        "woman",
        "bicycle",
        "pickup_truck",
        "rocket",
    ),
}
FC100_HELD_OUT: dict[str, tuple[str, ...]] = {
    "val": (
        "large_carnivores",
        "large_omnivores_and_herbivores",
        "non-insect_invertebrates",
        "small_mammals",
    ),
    "test": ("aquatic_mammals", "insects", "medium_mammals", "people"),
}


class Cifar100Split(ClassImages):
    """A few-shot split of CIFAR-100: a subclass names the classes (or, `by_superclass`, the
    superclasses) it holds out for validation and test; the rest train."""

    held_out: dict[str, tuple[str, ...]] = {}
    by_superclass = False

    def __init__(self, root: str, image_size: int = 32, augment=None, download: bool = True):
        super().__init__(root, image_size, augment)
        self.download = download

    def sources(self) -> list[Path]:
        folder = self.folder / FOLDER
        if not folder.is_dir():
            fetch_archive(self.folder, ARCHIVE, URL, MD5, self.download, "CIFAR-100")
        files = [folder / name for name in ("train", "test", "meta")]
        for path in files:
            if not path.exists():
                raise ConfigError(
                    f"{path} is missing: {self.folder} holds a partial CIFAR-100. "
                    f"Restore the official {ARCHIVE} there."
                )
        return files

    def listings(self) -> Iterable[tuple[str, list[tuple[str, list]]]]:
        folder = self.folder / FOLDER
        meta = read_pickle(folder / "meta", ("fine_label_names", "coarse_label_names"))
        parts = [
            read_pickle(folder / part, ("data", "fine_labels", "coarse_labels"))
            for part in ("train", "test")
        ]
        images = np.concatenate([part["data"] for part in parts]).reshape(-1, 3, 32, 32)
        images = images.transpose(0, 2, 3, 1)  # [N, H, W, C], as decode reads arrays
        fine = np.concatenate([part["fine_labels"] for part in parts])
        coarse = np.concatenate([part["coarse_labels"] for part in parts])
        listing: dict[str, list] = {split: [] for split in SPLITS}
        seen = set()
        for label, name in enumerate(meta["fine_label_names"]):
            rows = np.flatnonzero(fine == label)
            superclass = meta["coarse_label_names"][coarse[rows[0]]] if len(rows) else ""
            key = superclass if self.by_superclass else name
            split = next((s for s, keys in self.held_out.items() if key in keys), "train")
            listing[split].append((name, [(images, int(row)) for row in rows]))
            seen.add(key)
        absent = sorted({key for keys in self.held_out.values() for key in keys} - seen)
        if absent:
            raise ConfigError(
                f"{folder / 'meta'} names no class {absent[0]!r} of the {self.name} split: it is "
                f"not the official CIFAR-100. Restore the official {ARCHIVE} in {self.folder}."
            )
        return listing.items()


class CifarFS(Cifar100Split):
    name = "cifar_fs"
    held_out = CIFAR_FS_HELD_OUT


class FC100(Cifar100Split):
    name = "fc100"
    held_out = FC100_HELD_OUT
    by_superclass = True
