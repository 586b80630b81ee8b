"""A run's best checkpoint scored on fresh episodes of each split's classes (train, val, test),
under the run's own test protocol: how much of a gap to a paper is learning the training classes
and how much is carrying it over to new ones.

    python scripts/score_splits.py <run folder> [--episodes 600]
"""

from __future__ import annotations

import argparse

import torch

import metarun
from metarun.engine import make_engine
from metarun.evaluator import describe
from metarun.protocol import eval_sampler, score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run folder written by metarun train")
    parser.add_argument("--episodes", type=int, default=600)
    args = parser.parse_args()
    model = metarun.load(args.run)
    cfg, algo, dataset = model.config, model.algo, model.dataset
    engine = make_engine(cfg, algo, torch.device("cpu"))
    for split in ("train", "val", "test"):
        sampler = eval_sampler(cfg, dataset, split, torch.device("cpu"))
        print(
            f"{split}: {describe(score(cfg, algo, engine, sampler, dataset.metric, args.episodes))}"
        )


if __name__ == "__main__":
    main()
