"""Seconds per meta-update of MANN on the online protocol (16 episodes of 5 classes x 10
instances, 20x20 pixels): the straightforward per-episode loop against the engines that batch
the episodes, eager and compiled.

    OMP_NUM_THREADS=1 python scripts/mann_speed.py

Synthetic images of the same shape stand in for Omniglot (the time does not depend on the
pixels). Each engine's first meta-update (compilation included) is reported apart; the time per
update is the best of `--repeats` after it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from synthetic import TinyImages  # noqa: E402

from metarun.algorithms.mann import MANN  # noqa: E402
from metarun.backbones.pixels import Pixels  # noqa: E402
from metarun.engine import Engine  # noqa: E402

ENGINES = {"loop": ("loop", False), "vmap": ("vmap", False), "vmap+compile": ("vmap", True)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    parser.add_argument("--read-heads", type=int, default=4, help="0: the LSTM baseline")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    images = TinyImages(classes=20, per_class=10, image_size=20)
    batch = images.online_sequences("train", 5, 10, torch.device("cpu")).sample(
        16, torch.Generator().manual_seed(0)
    )
    threads = torch.get_num_threads()
    print(f"| engine | first update (s) | s per update of 16 episodes ({threads} threads) |")
    print("|---|---|---|")
    for name in args.engines:
        mode, compiled = ENGINES[name]
        torch.manual_seed(0)
        algo, engine = (
            MANN(Pixels((1, 20, 20)), 5, read_heads=args.read_heads),
            Engine(mode, compile=compiled),
        )
        start = time.perf_counter()
        engine.meta_backward(algo, batch)
        first, times = time.perf_counter() - start, []
        for _ in range(args.repeats):
            algo.zero_grad()
            start = time.perf_counter()
            engine.meta_backward(algo, batch)
            times.append(time.perf_counter() - start)
        print(f"| {name} | {first:.2f} | {min(times):.4f} |", flush=True)


if __name__ == "__main__":
    main()
