"""Meta-training speed of each algorithm's Omniglot 5-way 1-shot preset on this machine.

    OMP_NUM_THREADS=1 python scripts/algo_speed.py --iterations 5

Runs each preset through `metarun.run.train` for 2 x `--iterations` meta-updates (log rows every
`--iterations`) and reports the second row's `tasks_per_s`, which times only the meta-updates
(no validation, no first-iteration warm-up). A task is one episode; for Baseline one labelled
batch of `task.batch_size` images.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir

from metarun import run

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
PRESETS = [
    "maml_omniglot_5w1s",
    "anil_omniglot_5w1s",
    "meta_sgd_omniglot_5w1s",
    "reptile_omniglot_5w1s",
    "imaml_omniglot_5w1s",
    "maml_plus_plus_omniglot_5w1s",
    "lstm_meta_learner_omniglot_5w1s",
    "protonet_omniglot_5w1s",
    "matching_net_omniglot_5w1s",
    "relation_net_omniglot_5w1s",
    "baseline_omniglot",
    "snail_omniglot_5w1s",
    "meta_net_omniglot_5w1s",
    "mann_omniglot_online",
    "lstm_baseline_omniglot_online",
]


def tasks_per_second(preset: str, iterations: int, data_root: str) -> tuple[float, int]:
    overrides = [
        f"experiment={preset}",
        f"dataset.root={data_root}",
        f"trainer.iterations={2 * iterations}",
        f"trainer.log_every={iterations}",
        f"trainer.val_every={2 * iterations}",
        "trainer.val_episodes=1",
        "eval.episodes=1",
        "device=cpu",
    ]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with tempfile.TemporaryDirectory() as folder:
        run.train(cfg, Path(folder))
        rows = [
            json.loads(line) for line in (Path(folder) / "metrics.jsonl").read_text().splitlines()
        ]
    return rows[-1]["tasks_per_s"], cfg.task.meta_batch_size


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--presets", nargs="+", default=PRESETS)
    parser.add_argument("--data-root", default=os.environ.get("METARUN_DATA", "data"))
    args = parser.parse_args()
    print("| preset | tasks per meta-update | tasks/s |")
    print("|---|---|---|")
    for preset in args.presets:
        speed, batch = tasks_per_second(preset, args.iterations, args.data_root)
        print(f"| `{preset}` | {batch} | {speed:.2f} |", flush=True)


if __name__ == "__main__":
    main()
