"""The image benchmarks' decode-once cache: one raw uint8 file per split [images, C, H, W]
(class after class), written once through a shared memory map and mapped by every later run,
beside an index (class names, counts, image size, split settings, and a fingerprint of the
source files' names, sizes and times) that says whether it is still valid."""

from __future__ import annotations

import hashlib
import math
import os
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from metarun.checkpoint import atomic_save

if TYPE_CHECKING:
    from metarun.data.class_images import ClassImages

SPLITS = ("train", "val", "test")
CACHE_VERSION = 2


@dataclass(frozen=True)
class SplitImages:
    """One split's images, uint8 [total, C, H, W] grouped by class, `counts[c]` of class c."""

    images: torch.Tensor
    counts: torch.Tensor
    names: list[str]


def cache_location(folder: Path, name: str) -> Path:
    """Beside the data when its folder is writable, else under $METARUN_CACHE (~/.cache/metarun)."""
    # Permission bits, not os.access alone: as root the latter would write into read-only shares.
    if folder.is_dir() and folder.stat().st_mode & stat.S_IWUSR and os.access(folder, os.W_OK):
        return folder / name
    cache = Path(os.environ.get("METARUN_CACHE", Path.home() / ".cache" / "metarun"))
    digest = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:10]
    return cache / f"{digest}_{name}"


def fingerprint(paths: list[Path]) -> str:
    """A digest of the files' names, sizes and modification times: changes when any source does."""
    digest = hashlib.sha1()
    for path in sorted(paths):
        info = path.stat()
        digest.update(f"{path}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def load_or_build(dataset: ClassImages) -> dict[str, SplitImages]:
    """The dataset's splits from its cache, decoding the sources first when the cache is missing,
    unreadable or was built from other files or at another size."""
    settings = dataset.cache_settings()
    stamp = {
        "version": CACHE_VERSION,
        "image_size": dataset.image_size,
        "settings": settings,
        "fingerprint": fingerprint(dataset.sources()),
    }
    name = f"{dataset.name}_{dataset.image_size}px"
    if settings:  # each split choice keeps its own cache
        name += "_" + hashlib.sha1(repr(sorted(settings.items())).encode()).hexdigest()[:8]
    index_path = cache_location(dataset.folder, f"{name}.pt")
    index = _read_index(dataset, index_path, stamp)
    if index is None:
        index = _build(dataset, index_path, stamp)
    splits = {}
    for split in SPLITS:
        shape = _shape(dataset, index["counts"][split])
        raw = str(index_path.with_name(index["raw"][split]))
        flat = torch.from_file(raw, shared=False, size=math.prod(shape), dtype=torch.uint8)
        counts = torch.tensor(index["counts"][split], dtype=torch.long)
        splits[split] = SplitImages(flat.view(*shape), counts, index["names"][split])
    return splits


def _shape(dataset: ClassImages, counts: list[int]) -> list[int]:
    return [sum(counts), dataset.channels, dataset.image_size, dataset.image_size]


def _read_index(dataset: ClassImages, path: Path, stamp: dict) -> dict | None:
    """The index at `path` when it was built with `stamp` and its raw files are complete."""
    try:
        index = torch.load(path, weights_only=True)
        if any(index[key] != value for key, value in stamp.items()):
            return None
        for split in SPLITS:
            raw = path.with_name(index["raw"][split])
            if raw.stat().st_size != math.prod(_shape(dataset, index["counts"][split])):
                return None
        return index
    except Exception:
        return None


def _build(dataset: ClassImages, index_path: Path, stamp: dict) -> dict:
    """Decodes every image straight into a new raw file per split (no second copy in memory; a
    split's sources, such as a pickle, are read only while that split is cached), then publishes
    the index atomically: an interrupted build publishes nothing, and processes that build at
    once (torchrun's first run) each map the files they wrote."""
    started = time.time()
    index_path.parent.mkdir(parents=True, exist_ok=True)
    index = {**stamp, "raw": {}, "counts": {}, "names": {}}
    for split, listing in dataset.listings():
        index["counts"][split] = [len(items) for _, items in listing]
        index["names"][split] = [name for name, _ in listing]
        raw = index_path.with_name(f"{index_path.stem}-{uuid.uuid4().hex[:8]}.uint8")
        shape = _shape(dataset, index["counts"][split])
        pixels = torch.from_file(str(raw), shared=True, size=math.prod(shape), dtype=torch.uint8)
        pixels = pixels.view(*shape)
        items = [item for _, listed in listing for item in listed]
        for position, item in enumerate(
            tqdm(items, desc=f"caching {dataset.name} {split}", unit="image", leave=False)
        ):
            pixels[position] = dataset.decode(item)
        del pixels, listing, items
        index["raw"][split] = raw.name
    atomic_save(index, index_path)
    ours = {index_path.with_name(name) for name in index["raw"].values()}
    for stale in index_path.parent.glob(f"{index_path.stem}-*.uint8"):
        if stale not in ours and stale.stat().st_mtime < started:  # not another process's build
            stale.unlink(missing_ok=True)
    return index
