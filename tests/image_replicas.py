"""Small replicas of the image benchmarks, written in exactly their real layouts and file types
(random pixels, few classes), for the loader tests and scripts/image_bench.py. Each writer
returns what it wrote: {split: [(class name, uint8 [n, H, W, 3] images), ...]}."""

from __future__ import annotations

import csv
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = ("train", "val", "test")
CIFAR_SUPERCLASSES = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}


def random_images(count: int, size: int, seed: int) -> np.ndarray:
    """uint8 [count, size, size, 3] of random pixels."""
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def wordnet_ids(classes: dict[str, int]) -> dict[str, list[str]]:
    """Made-up WordNet-style ids per split, disjoint across splits."""
    ids, start = {}, 1000000
    for split in SPLITS:
        ids[split] = [f"n{start + i:08d}" for i in range(classes[split])]
        start += classes[split]
    return ids


def write_mini_imagenet_csv(
    root: Path, classes: dict[str, int], per_class: int, size: int = 84, seed: int = 0
) -> dict:
    """Ravi & Larochelle's layout: images/<wnid><index>.jpg plus {split}.csv (filename,label)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    written = {}
    for s, (split, names) in enumerate(wordnet_ids(classes).items()):
        rows, written[split] = [], []
        for c, wnid in enumerate(names):
            pixels = random_images(per_class, size, seed * 1000 + s * 100 + c)
            for i, image in enumerate(pixels):
                name = f"{wnid}{i + 1:08d}.jpg"
                Image.fromarray(image).save(root / "images" / name, quality=95)
                rows.append((name, wnid))
            written[split].append((wnid, pixels))
        with (root / f"{split}.csv").open("w", newline="") as handle:
            csv.writer(handle).writerows([("filename", "label"), *rows])
    return written


def write_mini_imagenet_pickle(
    root: Path, classes: dict[str, int], per_class: int, size: int = 84, seed: int = 0
) -> dict:
    """mini-imagenet-cache-{split}.pkl: {'image_data': uint8 [N, H, W, 3], 'class_dict'}."""
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    for s, (split, names) in enumerate(wordnet_ids(classes).items()):
        blocks = [
            random_images(per_class, size, seed * 1000 + s * 100 + c) for c in range(len(names))
        ]
        order = np.random.default_rng(seed + s).permutation(len(names) * per_class)  # interleaved
        data = np.concatenate(blocks)[order]
        class_dict = {
            wnid: [int(np.flatnonzero(order == c * per_class + i)[0]) for i in range(per_class)]
            for c, wnid in enumerate(names)
        }
        with (root / f"mini-imagenet-cache-{split}.pkl").open("wb") as handle:
            pickle.dump({"image_data": data, "class_dict": class_dict}, handle)
        written[split] = list(zip(names, blocks))
    return written


def write_tiered_imagenet(
    root: Path,
    classes: dict[str, int],
    per_class: int,
    size: int = 84,
    images: str = "png",
    seed: int = 0,
) -> dict:
    """Ren et al.'s layout: {split}_labels.pkl and {split}_images_png.pkl (PNG bytes) or
    {split}_images.npz (key 'images'); the images of a split's classes interleaved."""
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    for s, split in enumerate(SPLITS):
        names = [f"{split}_class_{c}" for c in range(classes[split])]
        blocks = [
            random_images(per_class + c % 2, size, seed * 1000 + s * 100 + c)
            for c in range(len(names))
        ]  # unequal class sizes, as in the real set
        labels = np.concatenate([np.full(len(b), c) for c, b in enumerate(blocks)])
        order = np.random.default_rng(seed + s).permutation(len(labels))
        data, labels = np.concatenate(blocks)[order], labels[order]
        record = {
            "label_specific": labels,
            "label_general": labels // 2,
            "label_specific_str": names,
            "label_general_str": ["a", "b", "c"],
        }
        with (root / f"{split}_labels.pkl").open("wb") as handle:
            pickle.dump(record, handle)
        if images == "npz":
            np.savez_compressed(root / f"{split}_images.npz", images=data)
        else:
            encoded = [np.frombuffer(png_bytes(image), dtype=np.uint8) for image in data]
            with (root / f"{split}_images_png.pkl").open("wb") as handle:
                pickle.dump(encoded, handle)
        written[split] = [(name, data[labels == c]) for c, name in enumerate(names)]  # file order
    return written


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_cifar100(
    root: Path, per_class: int = 6, seed: int = 0, rename: dict | None = None
) -> dict:
    """The official cifar-100-python.tar.gz layout (train, test and meta pickles, images as rows
    of 3072 bytes in channel-major order), all 100 real class names and superclasses; per class
    `per_class` images, the last in the test file; `rename` changes fine names (a foreign
    archive). Returns {fine name: uint8 [n, 32, 32, 3]}."""
    root.mkdir(parents=True, exist_ok=True)
    fine_names = sorted(name for names in CIFAR_SUPERCLASSES.values() for name in names)
    coarse_names = sorted(CIFAR_SUPERCLASSES)
    coarse_of = {f: coarse_names.index(c) for c, names in CIFAR_SUPERCLASSES.items() for f in names}
    written = {
        name: random_images(per_class, 32, seed * 1000 + i) for i, name in enumerate(fine_names)
    }
    parts = {}
    for part, rows in (("train", slice(0, per_class - 1)), ("test", slice(per_class - 1, None))):
        images = np.concatenate([written[name][rows] for name in fine_names])
        fine = [i for i, name in enumerate(fine_names) for _ in range(len(written[name][rows]))]
        parts[part] = {
            "data": images.transpose(0, 3, 1, 2).reshape(len(images), -1),
            "fine_labels": fine,
            "coarse_labels": [coarse_of[fine_names[f]] for f in fine],
            "filenames": [f"{i}.png" for i in range(len(fine))],
        }
    renamed = [(rename or {}).get(name, name) for name in fine_names]
    parts["meta"] = {"fine_label_names": renamed, "coarse_label_names": coarse_names}
    with tarfile.open(root / "cifar-100-python.tar.gz", "w:gz") as archive:
        for name, content in parts.items():
            data = pickle.dumps(content)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return written


def write_cub(
    root: Path, classes: int = 8, per_class: int = 4, size: int = 96, seed: int = 0
) -> dict:
    """CUB_200_2011/images/<NNN.Name>/<Name_NNNN>.jpg; returns {class folder: uint8 images}."""
    written = {}
    for c in range(classes):
        folder = root / "CUB_200_2011" / "images" / f"{c + 1:03d}.Bird_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = random_images(per_class, size, seed * 1000 + c)
        for i, image in enumerate(pixels):
            Image.fromarray(image).save(folder / f"Bird_{c}_{i:04d}.jpg", quality=95)
        written[folder.name] = pixels
    return written


def write_image_folder(
    root: Path, sizes: dict[str, int], size: int = 16, seed: int = 0, noise: int | None = None
) -> dict:
    """root/<class>/<i>.png (lossless) with sizes[class] images each; returns the pixels. With
    `noise`, each class is a fixed random pattern (0..199) plus uniform noise below `noise`, so
    the classes can be told apart; else every pixel is random."""
    written = {}
    for c, (name, count) in enumerate(sorted(sizes.items())):
        (root / name).mkdir(parents=True, exist_ok=True)
        pixels = random_images(count, size, seed * 1000 + c)
        if noise is not None:
            pattern = random_images(1, size, seed * 1000 + 500 + c).astype(np.int64) * 200 // 256
            pixels = (pattern + pixels.astype(np.int64) * noise // 256).astype(np.uint8)
        for i, image in enumerate(pixels):
            Image.fromarray(image).save(root / name / f"{i:03d}.png")
        written[name] = pixels
    return written
