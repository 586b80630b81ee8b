"""tieredImageNet (Ren et al., ICLR 2018): 608 ImageNet classes under 34 high-level categories,
split by category into 351/97/160 classes, at 84x84.

The layout in common use (Ren et al.'s release) holds per split `{split}_labels.pkl` (a dict
with `label_specific`, each image's class index in the split, and `label_specific_str`, the
class names) and the images either as `{split}_images_png.pkl` (a list of PNG-encoded images)
or compressed as `{split}_images.npz` (key `images`, uint8 [N, 84, 84, 3]).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from metarun.data.class_images import SPLITS, ClassImages, read_pickle
from metarun.errors import ConfigError

WHERE = (
    "tieredImageNet is built from ImageNet, whose terms do not allow redistribution, so metarun "
    "cannot download it. Get Ren et al.'s release "
    "(https://github.com/renmengye/few-shot-ssl-public: {split}_images_png.pkl or "
    "{split}_images.npz, and {split}_labels.pkl for train, val and test), then set "
    "dataset.root to their folder."
)
LABEL_KEYS = ("label_specific", "label_specific_str")


class TieredImageNet(ClassImages):
    name = "tiered_imagenet"

    def _images_file(self, split: str) -> Path:
        for candidate in (f"{split}_images.npz", f"{split}_images_png.pkl"):
            if (self.folder / candidate).exists():
                return self.folder / candidate
        raise ConfigError(f"No {split} images (npz or png pickle) in {self.folder}. {WHERE}")

    def sources(self) -> list[Path]:
        files = []
        for split in SPLITS:
            labels = self.folder / f"{split}_labels.pkl"
            if not labels.exists():
                raise ConfigError(f"{labels} is missing. {WHERE}")
            files += [labels, self._images_file(split)]
        return files

    def listings(self) -> Iterator[tuple[str, list[tuple[str, list]]]]:
        for split in SPLITS:  # a split's arrays are read only while that split is cached
            yield split, self._split(split)

    def _split(self, split: str) -> list[tuple[str, list]]:
        labels = read_pickle(self.folder / f"{split}_labels.pkl", LABEL_KEYS)
        images = self._images(self._images_file(split))
        specific = np.asarray(labels["label_specific"])
        if len(specific) != len(images):
            raise ConfigError(
                f"{self.folder} holds {len(images)} {split} images but {len(specific)} {split} "
                f"labels: one of the files is truncated. {WHERE}"
            )
        names = list(labels["label_specific_str"])
        return [
            (str(names[label]), [(images, int(row)) for row in np.flatnonzero(specific == label)])
            for label in range(len(names))
        ]

    def _images(self, path: Path):
        if path.suffix == ".npz":
            try:
                with np.load(path) as stored:
                    return stored["images"]
            except Exception:
                raise ConfigError(f"{path} cannot be read (truncated?). {WHERE}") from None
        return read_pickle(path)

    def decode(self, item: tuple) -> torch.Tensor:
        images, row = item
        if isinstance(images, np.ndarray):
            return super().decode(item)
        try:
            return self.to_pixels(Image.open(io.BytesIO(bytes(images[row]))))
        except Exception:
            raise ConfigError(
                f"Image {row} of a tieredImageNet png pickle in {self.folder} cannot be decoded: "
                f"the file is damaged. {WHERE}"
            ) from None
