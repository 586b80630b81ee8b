"""CUB-200-2011 birds (Wah et al. 2011) with the few-shot split of Chen et al. (ICLR 2019, "A
Closer Look at Few-shot Classification"; Hilliard et al. 2018 split 100/50/50 the same way):
the 200 class folders sorted by name, class i goes to train when i % 4 is 0 or 2, to val when
1, to test when 3.

Each image is squashed to 1.15 x image_size and centre-cropped to image_size, Chen et al.'s
evaluation transform (84x84 by default). Reads the official archive CUB_200_2011.tgz (md5
97eceeb196236b17998738112f37df78) or its extracted CUB_200_2011/images/<class>/*.jpg.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from metarun.data.class_images import SPLITS, ClassImages, fetch_archive, fit

URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
MD5 = "97eceeb196236b17998738112f37df78"
ARCHIVE = "CUB_200_2011.tgz"
SPLIT_OF_REMAINDER = {0: "train", 1: "val", 2: "train", 3: "test"}
MARGIN = 1.15  # squash to this multiple of image_size, then centre-crop


class CUB(ClassImages):
    name = "cub"

    def __init__(self, root: str, image_size: int = 84, augment=None, download: bool = True):
        super().__init__(root, image_size, augment)
        self.download = download

    @property
    def images_folder(self) -> Path:
        return self.folder / "CUB_200_2011" / "images"

    def sources(self) -> list[Path]:
        if not self.images_folder.is_dir():
            fetch_archive(self.folder, ARCHIVE, URL, MD5, self.download, "CUB-200-2011")
        return [path for path in self.images_folder.rglob("*") if path.is_file()]

    def listings(self) -> Iterable[tuple[str, list[tuple[str, list[Path]]]]]:
        classes = sorted(path for path in self.images_folder.iterdir() if path.is_dir())
        listing: dict[str, list] = {split: [] for split in SPLITS}
        for index, folder in enumerate(classes):
            images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMG_EXTENSIONS)
            listing[SPLIT_OF_REMAINDER[index % 4]].append((folder.name, images))
        return listing.items()

    def to_pixels(self, image: Image.Image) -> torch.Tensor:
        larger = fit(image, int(self.image_size * MARGIN))
        return TF.center_crop(larger, [self.image_size, self.image_size])
