"""Measures meta-training throughput (tasks/s) of the loop and vmap engines on one model.

This is the measurement behind `engine=auto`. Synthetic data of the right shapes;
warm-up first; median of several meta-batches.

    python scripts/engine_choice.py --model conv4 --ways 5 --shots 1 --queries 15 --tasks 32
    python scripts/engine_choice.py --model mlp --shots 10 --queries 10 --tasks 25
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from metarun.algorithms.maml import MAML
from metarun.backbones.conv4 import Conv4
from metarun.backbones.mlp import MLP
from metarun.engine import Engine
from metarun.episode import Episode


def synthetic_batch(model: str, tasks: int, ways: int, shots: int, queries: int) -> Episode:
    if model == "mlp":
        x = torch.rand(tasks, shots + queries, 1) * 10 - 5
        y = torch.sin(x)
        return Episode(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:], 1)
    labels = lambda n: torch.arange(ways).repeat_interleave(n).repeat(tasks, 1)
    return Episode(torch.rand(tasks, ways * shots, 1, 28, 28), labels(shots),
                   torch.rand(tasks, ways * queries, 1, 28, 28), labels(queries), ways)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["conv4", "mlp"], default="conv4")
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.model == "mlp":
        algo = MAML(MLP((1,), [40, 40]), 1, inner_lr=0.01, inner_steps=1)
    else:
        algo = MAML(Conv4((1, 28, 28)), args.ways, inner_lr=0.4, inner_steps=1)
    batch = synthetic_batch(args.model, args.tasks, args.ways, args.shots, args.queries)
    print(f"{args.model}, {args.tasks} tasks, threads={torch.get_num_threads()}")
    for mode in ("loop", "vmap"):
        engine = Engine(mode)
        engine.meta_backward(algo, batch)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            engine.meta_backward(algo, batch)
            times.append(time.perf_counter() - start)
        print(f"  {mode:5s} {args.tasks / statistics.median(times):10.1f} tasks/s")


if __name__ == "__main__":
    main()
