"""A tiny in-memory image dataset for tests that need images but not Omniglot: each class is a
fixed random pattern plus noise, so a model can learn it in a few steps."""

from __future__ import annotations

import torch

from metarun.data.sampler import ClassImageSampler, LabelledImageSampler, OnlineSequenceSampler

SPLITS = {"train": 0, "val": 1, "test": 2}


class TinyImages:
    metric = "accuracy"
    pixel_range = (0.0, 1.0)

    def __init__(
        self,
        classes: int = 8,
        per_class: int = 10,
        image_size: int = 16,
        seed: int = 0,
        channels: int = 1,
    ) -> None:
        self.classes, self.per_class, self.image_size, self.seed = (
            classes,
            per_class,
            image_size,
            seed,
        )
        self.input_shape = (channels, image_size, image_size)

    def split_images(self, split: str) -> torch.Tensor:
        """uint8 [classes, per_class, C, H, W]; each split has its own classes."""
        generator = torch.Generator().manual_seed(self.seed * 10 + SPLITS[split])
        shape = (self.classes, 1, self.input_shape[0], self.image_size, self.image_size)
        patterns = torch.rand(shape, generator=generator) * 200
        noise = torch.rand(self.classes, self.per_class, *shape[2:], generator=generator) * 55
        return (patterns + noise).to(torch.uint8)

    def out_features(self, ways: int) -> int:
        return ways

    def preprocess(self, raw: torch.Tensor) -> torch.Tensor:
        return raw.float() / 255.0

    def protocol(self) -> dict:
        return {"dataset": "tiny_images", "classes": self.classes, "per_class": self.per_class}

    def sampler(self, split: str, ways: int, shots: int, queries: int, device: torch.device):
        return ClassImageSampler(self.split_images(split).to(device), split, ways, shots, queries)

    def online_sequences(self, split: str, ways: int, instances: int, device: torch.device):
        return OnlineSequenceSampler(self.split_images(split).to(device), split, ways, instances)

    def num_classes(self, split: str) -> int:
        return self.classes

    def labelled_batches(self, split: str, batch_size: int, device: torch.device):
        return LabelledImageSampler(self.split_images(split).to(device), batch_size)


def meta_train(
    algo,
    sampler,
    updates: int,
    tasks: int,
    mode: str = "loop",
    lr: float = 1e-3,
    clip: float | None = None,
):
    """A bare meta-training loop (Adam, `tasks` episodes per update) for the tiny problems that
    tests ask an algorithm to solve; returns the engine, to score the trained model with."""
    from metarun.engine import Engine

    optimizer, engine = torch.optim.Adam(algo.parameters(), lr), Engine(mode)
    generator = torch.Generator().manual_seed(0)
    for _ in range(updates):
        optimizer.zero_grad()
        engine.meta_backward(algo, sampler.sample(tasks, generator))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(algo.parameters(), clip)
        optimizer.step()
    return engine


def accuracies_over_seeds(train_and_test, seeds: range) -> list[float]:
    """`train_and_test(seed)`'s test accuracy for each seed. A learning test asserts over
    several seeds with a margin: float rounding differs with the CPU and the thread count, so
    one seed that learns on one machine can stall on another."""
    accuracies = []
    for seed in seeds:
        torch.manual_seed(seed)
        accuracies.append(float(train_and_test(seed)))
    return accuracies


SHORT_REGRESSION_RUN = [
    "task.ways=1",
    "task.shots=5",
    "task.queries=5",
    "task.meta_batch_size=4",
    "eval.queries=20",
    "eval.episodes=40",
    "trainer.val_every=100",
    "trainer.val_episodes=20",
    "trainer.ckpt_every=100",
    "trainer.log_every=100",
    "device=cpu",
    "compile=false",
]


def train_runs(folder, overrides: list[str], *iterations: int) -> list[dict]:
    """results.json of one `metarun train` per iteration count (same seed and settings), in
    folder/<count>: how tests see what a short run changes."""
    from conftest import CONFIGS
    from hydra import compose, initialize_config_dir

    from metarun import run

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        configs = [compose("train", [*overrides, f"trainer.iterations={n}"]) for n in iterations]
    return [run.train(cfg, folder / str(n)) for cfg, n in zip(configs, iterations)]
