"""miniImageNet (Vinyals et al. 2016) with the split of Ravi & Larochelle (ICLR 2017): 64/16/20
ImageNet classes of 600 images each, at 84x84.

Two layouts are read from `root`:
- Ravi's: an `images/` folder and `train.csv`, `val.csv`, `test.csv` with rows `filename,label`
  (the label a WordNet id such as n01532829);
- the pickled arrays several public loaders ship: `mini-imagenet-cache-{train,val,test}.pkl`,
  each a dict with `image_data` (uint8 [N, 84, 84, 3]) and `class_dict` ({WordNet id: [row...]}).
Classes are ordered by WordNet id in both, so both layouts give the same labels.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from metarun.data.class_images import SPLITS, ClassImages, read_pickle
from metarun.errors import ConfigError

WHERE = (
    "miniImageNet is built from ImageNet, whose terms do not allow redistribution, so metarun "
    "cannot download it. Get Ravi & Larochelle's split (images/ plus train.csv, val.csv, "
    "test.csv; https://github.com/twitter-research/meta-learning-lstm) or the pickled "
    "mini-imagenet-cache-{train,val,test}.pkl files, then set dataset.root to their folder."
)


class MiniImageNet(ClassImages):
    name = "mini_imagenet"

    def _layout(self) -> str:
        if (self.folder / "images").is_dir() and (self.folder / "train.csv").exists():
            return "csv"
        if (self.folder / "mini-imagenet-cache-train.pkl").exists():
            return "pickle"
        raise ConfigError(f"No miniImageNet files found in {self.folder}. {WHERE}")

    def sources(self) -> list[Path]:
        if self._layout() == "pickle":
            files = [self.folder / f"mini-imagenet-cache-{split}.pkl" for split in SPLITS]
        else:
            files = [self.folder / f"{split}.csv" for split in SPLITS]
            files += [path for path in (self.folder / "images").iterdir() if path.is_file()]
        for path in files:
            if not path.exists():
                raise ConfigError(f"{path} is missing. {WHERE}")
        return files

    def listings(self) -> Iterator[tuple[str, list[tuple[str, list]]]]:
        read = self._csv_split if self._layout() == "csv" else self._pickled_split
        for split in SPLITS:  # a split's pickle is read only while that split is cached
            yield split, read(split)

    def _csv_split(self, split: str) -> list[tuple[str, list[Path]]]:
        path = self.folder / f"{split}.csv"
        classes: dict[str, list[Path]] = {}
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                try:
                    classes.setdefault(row["label"], []).append(
                        self.folder / "images" / row["filename"]
                    )
                except (KeyError, TypeError):
                    raise ConfigError(
                        f"{path} is not a miniImageNet split file: its rows must be "
                        f"'filename,label' under that header. {WHERE}"
                    ) from None
        return sorted(classes.items())

    def _pickled_split(self, split: str) -> list[tuple[str, list]]:
        path = self.folder / f"mini-imagenet-cache-{split}.pkl"
        stored = read_pickle(path, ("image_data", "class_dict"))
        images = stored["image_data"]
        return [
            (name, [(images, row) for row in rows])
            for name, rows in sorted(stored["class_dict"].items())
        ]
