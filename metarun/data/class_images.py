"""What the few-shot image benchmarks share: their decode-once cache (metarun.data.image_cache),
the episode, labelled-batch and online samplers over it, and the helpers their files need.

A format (mini_imagenet.py, cub.py, image_folder.py...) says which files it reads (`sources`),
which classes each split has and where each image comes from (`listings`), and how one item
becomes pixels (`decode`). The first run decodes every image once at `image_size` into one raw
uint8 file per split; later runs map those files, so pages are read on demand and shared by
every process through the page cache, and a 1.3 GB miniImageNet never sits in memory twice.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.datasets.utils import download_url, extract_archive

from metarun.data.image_cache import SPLITS, SplitImages, load_or_build
from metarun.data.sampler import (
    Augmented,
    ClassImageSampler,
    LabelledImageSampler,
    OnlineSequenceSampler,
)
from metarun.errors import ConfigError


def fit(image: Image.Image | torch.Tensor, image_size: int) -> torch.Tensor:
    """A PIL image or uint8 [C, H, W] -> uint8 RGB [3, size, size], resized (antialiased, aspect
    not kept, as Ravi & Larochelle's miniImageNet script does) only when its size differs."""
    pixels = image if isinstance(image, torch.Tensor) else TF.pil_to_tensor(image.convert("RGB"))
    if tuple(pixels.shape[1:]) == (image_size, image_size):
        return pixels
    small = TF.resize(pixels.float(), [image_size, image_size], antialias=True)
    return small.round().clamp_(0, 255).to(torch.uint8)


def open_image(path: Path) -> Image.Image:
    """The decoded image at `path`, or a clear error naming the file."""
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except Exception:
        raise ConfigError(
            f"The image {path} cannot be read (truncated or not an image). Replace it with the "
            "original file, or delete it and restore the dataset's archive."
        ) from None


def read_pickle(path: Path, keys: tuple[str, ...] = ()) -> Any:
    """A pickled object (Python 2 pickles too), a dict holding `keys` when they are given, or a
    clear error naming the file."""
    try:
        with path.open("rb") as handle:
            stored = pickle.load(handle, encoding="latin1")
        if not keys or (isinstance(stored, dict) and all(key in stored for key in keys)):
            return stored
    except Exception:
        pass
    wanted = f" (a dict with {', '.join(keys)})" if keys else ""
    raise ConfigError(
        f"{path} cannot be read as the expected pickle{wanted}: it is truncated or of another "
        "layout. Replace it with the original file."
    )


def fetch_archive(
    folder: Path, archive: str, url: str, md5: str, download: bool, what: str
) -> None:
    """Extracts `archive` into `folder`, downloading it first from its official `url` (checked
    against `md5`) when it is missing and `download` is on; a clear error otherwise. A local
    archive's checksum is not checked, so re-packed copies (and the tests' replicas) work."""
    path = folder / archive
    where = f"{what} was not found in {folder} (expected {archive} or its extracted folder)."
    if not path.exists():
        if not download:
            raise ConfigError(
                f"{where} Set dataset.root to the folder that holds it, or set "
                "dataset.download=true."
            )
        try:
            download_url(url, str(folder), filename=archive, md5=md5)
        except Exception as error:  # any network or disk failure ends in the same advice
            raise ConfigError(
                f"{where} Downloading {url} failed ({error}). Put the archive there by hand."
            ) from None
    try:
        extract_archive(str(path), str(folder))
    except Exception as error:
        raise ConfigError(
            f"{path} cannot be extracted ({error}): it is truncated or damaged. Replace it with "
            "the official archive."
        ) from None


class ClassImages:
    """Base of the image benchmarks. A subclass sets `name` and `channels` and implements
    `sources`, `listings` and `decode`; everything else (cache, samplers, augmentation) is here."""

    metric = "accuracy"
    pixel_range = (0.0, 1.0)  # what an attack's perturbed images are clipped to
    channels = 3
    name = "images"

    def __init__(self, root: str, image_size: int, augment: Any = None) -> None:
        self.folder = Path(root).expanduser()
        self.image_size = image_size
        self.augment = augment  # a transform of one float [C, H, W] image, training split only
        self.input_shape = (self.channels, image_size, image_size)
        self._splits: dict[str, SplitImages] | None = None
        self._on_device: dict[tuple[torch.device, str], torch.Tensor] = {}

    def sources(self) -> list[Path]:
        """The files the images come from; raises a ConfigError saying where to get them."""
        raise NotImplementedError

    def listings(self) -> Iterable[tuple[str, list[tuple[str, list[Any]]]]]:
        """(split, [(class name, [item, ...]), ...]) for train, val and test in turn, each split's
        classes in label order; a generator lets a format read a split's sources only while that
        split is cached."""
        raise NotImplementedError

    def decode(self, item: Any) -> torch.Tensor:
        """One listed item -> uint8 [C, image_size, image_size]. The default reads an image file,
        or takes row `i` of an array of uint8 [N, H, W, C] images given as (array, i)."""
        if isinstance(item, tuple):
            array, row = item
            return fit(torch.from_numpy(array[row]).permute(2, 0, 1), self.image_size)
        return self.to_pixels(open_image(item))

    def to_pixels(self, image: Image.Image) -> torch.Tensor:
        """A decoded image file -> uint8 [C, image_size, image_size], as the cache stores it."""
        return fit(image, self.image_size)

    def cache_settings(self) -> dict:
        """Settings besides the files and the image size that change what the cache holds."""
        return {}

    def out_features(self, ways: int) -> int:
        return ways

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """A PIL image -> the model's float input [C, H, W] in [0, 1], as the cache stores it."""
        return self.to_pixels(image).float() / 255.0

    def protocol(self) -> dict:
        return {
            "dataset": self.name,
            "image_size": self.image_size,
            "classes": {split: self.num_classes(split) for split in SPLITS},
        }

    def split(self, split: str) -> SplitImages:
        if self._splits is None:
            self._splits = load_or_build(self)
        return self._splits[split]

    def num_classes(self, split: str) -> int:
        return len(self.split(split).names)

    def _on(self, device: torch.device, split: str) -> tuple[torch.Tensor, SplitImages]:
        """The split's images on `device`, copied there once however many samplers read them
        (one per shot count when shots vary per batch)."""
        key = (torch.device(device), split)
        if key not in self._on_device:
            self._on_device[key] = self.split(split).images.to(device)
        return self._on_device[key], self.split(split)

    def sampler(self, split: str, ways: int, shots: int, queries: int, device: torch.device):
        images, part = self._on(device, split)
        sampler = ClassImageSampler(images, split, ways, shots, queries, part.counts, part.names)
        return self._augmented(sampler, split)

    def labelled_batches(self, split: str, batch_size: int, device: torch.device):
        images, part = self._on(device, split)
        return self._augmented(LabelledImageSampler(images, batch_size, part.counts), split)

    def online_sequences(self, split: str, ways: int, instances: int, device: torch.device):
        images, part = self._on(device, split)
        return OnlineSequenceSampler(images, split, ways, instances, part.counts)

    def _augmented(self, sampler, split: str):
        return Augmented(sampler, self.augment) if self.augment and split == "train" else sampler
