"""Omniglot (Lake et al., Science 2015) from the official zips or their extracted folders.

The 32,460 drawings are decoded once, resized to image_size with antialiasing,
inverted (stroke = 1, as in the MAML and Prototypical Networks code) and cached as
one uint8 tensor file, so every later run starts in about a second.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from tqdm import tqdm

from metarun.checkpoint import atomic_save
from metarun.data.image_cache import cache_location
from metarun.data.sampler import ClassImageSampler, LabelledImageSampler, OnlineSequenceSampler
from metarun.errors import ConfigError

ARCHIVES = ("images_background", "images_evaluation")
ARCHIVE_URL = "https://github.com/brendenlake/omniglot/raw/master/python/{}.zip"
SPLIT_URL = (
    "https://raw.githubusercontent.com/jakesnell/prototypical-networks/master/"
    "data/omniglot/splits/vinyals/{}.txt"
)
SPLITS = ("train", "val", "test")
LAKE_VAL_ALPHABETS = 5
CACHE_VERSION = 1


def to_pixels(image: Image.Image, image_size: int) -> torch.Tensor:
    """A PIL drawing -> uint8 [1, size, size] with the stroke bright and the background 0."""
    gray = TF.pil_to_tensor(image.convert("L"))
    small = TF.resize(gray.float(), [image_size, image_size], antialias=True)
    return (255.0 - small).round().clamp_(0, 255).to(torch.uint8)


class Omniglot:
    """Omniglot classification with the Vinyals (default) or Lake split."""

    metric = "accuracy"
    pixel_range = (0.0, 1.0)  # what an attack's perturbed images are clipped to

    def __init__(
        self,
        root: str,
        split: str = "vinyals",
        image_size: int = 28,
        rotations: list[int] | None = None,
        download: bool = True,
    ) -> None:
        if split not in ("vinyals", "lake"):
            raise ConfigError(
                f"dataset.split={split!r} is not known. "
                "Use dataset.split=vinyals or dataset.split=lake."
            )
        self.folder = Path(root).expanduser() / "omniglot"
        self.split_name = split
        self.image_size = image_size
        self.rotations = list(rotations or [0])
        self.download = download
        self.input_shape = (1, image_size, image_size)
        self._names: list[str] | None = None
        self._images: torch.Tensor | None = None

    def out_features(self, ways: int) -> int:
        return ways

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """An official 105x105 Omniglot PNG (PIL image) -> the model's float input [1, H, W]."""
        return to_pixels(image, self.image_size).float() / 255.0

    def protocol(self) -> dict:
        rotations = (
            "as listed in the split files" if self.split_name == "vinyals" else self.rotations
        )
        return {
            "dataset": "omniglot",
            "split": self.split_name,
            "rotations": rotations,
            "image_size": self.image_size,
        }

    def sampler(
        self, split: str, ways: int, shots: int, queries: int, device: torch.device
    ) -> ClassImageSampler:
        images = self.split_images(split).to(device)
        return ClassImageSampler(images, split, ways, shots, queries)

    def labelled_batches(
        self, split: str, batch_size: int, device: torch.device
    ) -> LabelledImageSampler:
        return LabelledImageSampler(self.split_images(split).to(device), batch_size)

    def online_sequences(
        self, split: str, ways: int, instances: int, device: torch.device
    ) -> OnlineSequenceSampler:
        return OnlineSequenceSampler(self.split_images(split).to(device), split, ways, instances)

    def num_classes(self, split: str) -> int:
        return len(self._entries(split))

    def _entries(self, split: str) -> list[tuple[str, int]]:
        """(character, rotation in degrees) of each class of one split."""
        if self.split_name == "vinyals":
            return self._vinyals_entries(split)
        return self._lake_entries(split, self._load()[0])

    def split_images(self, split: str) -> torch.Tensor:
        """uint8 [classes, 20, 1, H, W] of one split, rotations applied as new classes."""
        names, images = self._load()
        index = {name: i for i, name in enumerate(names)}
        classes = []
        for character, degrees in self._entries(split):
            if character not in index:
                raise ConfigError(
                    f"The split file names {character!r}, which is not among the {len(names)} "
                    f"characters found in {self.folder}. The dataset folder looks partial: restore "
                    "both official zips (or their folders) there."
                )
            classes.append(torch.rot90(images[index[character]], k=degrees // 90, dims=(-2, -1)))
        return torch.stack(classes)

    def _vinyals_entries(self, split: str) -> list[tuple[str, int]]:
        path = self.folder / "splits" / "vinyals" / f"{split}.txt"
        if not path.exists():
            fetch(self.folder, self.download)
        entries = []
        for line in path.read_text().split():
            alphabet, character, rotation = line.split("/")
            entries.append((f"{alphabet}/{character}", int(rotation.removeprefix("rot"))))
        return entries

    def _lake_entries(self, split: str, names: list[str]) -> list[tuple[str, int]]:
        background = sorted({n.split("/")[0] for n in names[: self._background_count]})
        held_out = set(background[-LAKE_VAL_ALPHABETS:])
        if split == "test":
            chosen = names[self._background_count :]
        else:
            chosen = [
                n
                for n in names[: self._background_count]
                if (n.split("/")[0] in held_out) == (split == "val")
            ]
        return [(name, degrees) for name in chosen for degrees in self.rotations]

    def _load(self) -> tuple[list[str], torch.Tensor]:
        if self._images is None:
            cache = cache_path(self.folder, self.image_size)
            stored = _read_cache(cache, self.image_size)
            if stored is None:
                stored = decode_all(self.folder, self.image_size, self.download)
                cache.parent.mkdir(parents=True, exist_ok=True)
                atomic_save(stored, cache)
            self._names, self._images = stored["names"], stored["images"]
            self._background_count = stored["background_count"]
        assert self._names is not None and self._images is not None
        return self._names, self._images


def _read_cache(path: Path, image_size: int) -> dict | None:
    """The cached tensors, or None when the cache is missing, unreadable or stale."""
    try:
        stored = torch.load(path, weights_only=True)
        if stored["version"] == CACHE_VERSION and stored["image_size"] == image_size:
            return stored
    except Exception:
        return None
    return None


def cache_path(folder: Path, image_size: int) -> Path:
    """Beside the data when its folder is writable, else under $METARUN_CACHE (~/.cache/metarun)."""
    return cache_location(folder, f"omniglot_{image_size}px.pt")


def read_archive(root: Path, archive: str, image_size: int) -> dict[str, torch.Tensor]:
    """{'Alphabet/characterNN': uint8 [drawings, 1, H, W] in file order} from one official zip
    under `root`, or its extracted folder."""
    folder, zipped = root / archive, root / f"{archive}.zip"
    if folder.is_dir():
        files = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*.png")}
        return _decode(files, str(folder), image_size)
    with zipfile.ZipFile(zipped) as handle:
        members = [m for m in handle.namelist() if m.endswith(".png")]
        files = {m.split("/", 1)[1]: handle.read(m) for m in members}
    return _decode(files, str(zipped), image_size)


def _decode(files: dict[str, bytes], source: str, image_size: int) -> dict[str, torch.Tensor]:
    characters: dict[str, list[torch.Tensor]] = {}
    for relative in tqdm(
        sorted(files), desc=f"decoding {Path(source).name}", unit="image", leave=False
    ):
        alphabet, character, _ = relative.split("/")[-3:]
        try:
            pixels = to_pixels(Image.open(io.BytesIO(files[relative])), image_size)
        except Exception:
            raise ConfigError(
                f"The image {relative} in {source} cannot be read. Replace it with the "
                "official file, or delete it and restore the official zip."
            ) from None
        characters.setdefault(f"{alphabet}/{character}", []).append(pixels)
    return {name: torch.stack(drawings) for name, drawings in characters.items()}


def _missing(folder: Path, archive: str) -> bool:
    return not (folder / archive).is_dir() and not (folder / f"{archive}.zip").exists()


def decode_all(folder: Path, image_size: int, download: bool) -> dict:
    """Both archives decoded: the cache's content (names, images [1623, 20, 1, H, W], ...)."""
    names, images, background_count = [], [], 0
    for archive in ARCHIVES:
        if _missing(folder, archive):
            fetch(folder, download)
        for character, pixels in sorted(read_archive(folder, archive, image_size).items()):
            names.append(character)
            images.append(pixels)
        if archive == ARCHIVES[0]:
            background_count = len(names)
    counts = {name: len(pixels) for name, pixels in zip(names, images)}
    short = [name for name, count in counts.items() if count != max(counts.values())]
    if short:
        raise ConfigError(
            f"{len(short)} characters in {folder} have fewer drawings than the others (e.g. "
            f"{short[0]}: {counts[short[0]]}). The dataset folder is partial: restore the "
            "official zips (or their folders)."
        )
    return {
        "version": CACHE_VERSION,
        "image_size": image_size,
        "names": names,
        "images": torch.stack(images),
        "background_count": background_count,
    }


def fetch(folder: Path, download: bool) -> None:
    """Downloads the official files, or explains where they were looked for."""
    where = (
        f"Omniglot was not found under {folder} (expected images_background.zip and "
        "images_evaluation.zip, or their extracted folders, and splits/vinyals/*.txt)."
    )
    if not download:
        raise ConfigError(
            f"{where} Point dataset.root (or the METARUN_DATA environment variable) "
            "at the folder that contains omniglot/, or set dataset.download=true."
        )
    from torchvision.datasets.utils import download_url

    try:
        for archive in ARCHIVES:
            if _missing(folder, archive):
                download_url(ARCHIVE_URL.format(archive), str(folder))
        for split in SPLITS + ("trainval",):
            if not (folder / "splits" / "vinyals" / f"{split}.txt").exists():
                download_url(SPLIT_URL.format(split), str(folder / "splits" / "vinyals"))
    except Exception as error:  # any network or disk failure ends in the same advice
        raise ConfigError(
            f"{where} Downloading them from the official release failed ({error}). "
            "Point dataset.root (or METARUN_DATA) at a local copy."
        ) from None
