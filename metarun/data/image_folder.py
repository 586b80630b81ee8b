"""Any folder of images laid out as root/<class>/<image files> (torchvision's ImageFolder layout),
split into train/val/test classes by three text files (one class folder name per line) or at
random by fractions and a seed. Images are squashed to image_size x image_size."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from metarun.data.class_images import SPLITS, ClassImages
from metarun.errors import ConfigError


class ImageFolder(ClassImages):
    name = "image_folder"

    def __init__(
        self,
        root: str,
        image_size: int = 84,
        augment=None,
        split_files: dict | None = None,
        fractions: Sequence[float] = (0.6, 0.2, 0.2),
        split_seed: int = 0,
    ) -> None:
        super().__init__(root, image_size, augment)
        self.split_files = dict(split_files) if split_files else None
        self.fractions, self.split_seed = list(fractions), split_seed

    def cache_settings(self) -> dict:
        if self.split_files:
            return {split: self._read_names(split) for split in SPLITS}
        return {"fractions": self.fractions, "split_seed": self.split_seed}

    def _samples(self) -> tuple[list[str], list[tuple[str, int]]]:
        if not self.folder.is_dir():
            raise ConfigError(
                f"dataset.root={str(self.folder)!r} is not a folder. Point it at a "
                "folder holding one subfolder of images per class."
            )
        try:
            classes, index = find_classes(str(self.folder))
            return classes, make_dataset(str(self.folder), index, extensions=IMG_EXTENSIONS)
        except FileNotFoundError as error:
            raise ConfigError(
                f"dataset=image_folder: {error} Each class needs its own "
                f"subfolder of {self.folder} with image files in it."
            ) from None

    def sources(self) -> list[Path]:
        return [Path(path) for path, _ in self._samples()[1]]

    def listings(self) -> Iterable[tuple[str, list[tuple[str, list[Path]]]]]:
        classes, samples = self._samples()
        images: dict[str, list[Path]] = {name: [] for name in classes}
        for path, label in samples:
            images[classes[label]].append(Path(path))
        chosen = self._assign(classes)
        return [(split, [(name, images[name]) for name in chosen[split]]) for split in SPLITS]

    def _assign(self, classes: list[str]) -> dict[str, list[str]]:
        if self.split_files:
            chosen = {split: self._read_names(split) for split in SPLITS}
            for split, names in chosen.items():
                unknown = sorted(set(names) - set(classes))
                if unknown:
                    raise ConfigError(
                        f"dataset.split_files.{split} names {len(unknown)} classes with no folder "
                        f"in {self.folder} (e.g. {unknown[0]!r}). Fix the file or the folder."
                    )
            return chosen
        if len(self.fractions) != 3 or min(self.fractions) <= 0:
            raise ConfigError(
                f"dataset.fractions={self.fractions} must be three positive "
                "numbers (train, val, test), e.g. [0.6, 0.2, 0.2]."
            )
        order = torch.randperm(
            len(classes), generator=torch.Generator().manual_seed(self.split_seed)
        )
        total = sum(self.fractions)
        ends = [round(len(classes) * sum(self.fractions[: i + 1]) / total) for i in range(3)]
        starts = [0, *ends[:2]]
        chosen = {
            split: sorted(classes[i] for i in order[start:end].tolist())
            for split, start, end in zip(SPLITS, starts, ends)
        }
        empty = [split for split in SPLITS if not chosen[split]]
        if empty:
            raise ConfigError(
                f"dataset.fractions={self.fractions} leaves the {empty[0]} split of the "
                f"{len(classes)} classes in {self.folder} empty. Add classes or change the "
                "fractions."
            )
        return chosen

    def _read_names(self, split: str) -> list[str]:
        files = self.split_files or {}
        if split not in files:
            raise ConfigError(
                f"dataset.split_files needs train, val and test entries; {split} is missing."
            )
        path = Path(files[split]).expanduser()
        if not path.exists():
            raise ConfigError(
                f"dataset.split_files.{split}={str(path)!r} does not exist. Give a "
                "text file with one class folder name per line."
            )
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
