"""Parity of Bayesian MAML with the authors' code (jaesik817/bmaml) at equal budget.

    python scripts/parity_bmaml.py --source <jaesik817/bmaml checkout> \
        --tensorflow-python <python with tensorflow, tf-keras, matplotlib> --iterations 5000

Both train at the same time, one thread each, on the authors' sinusoid protocol (100 fixed
training tasks, K = 5 plus 5 leader points, 10 particles, 10 tasks per update, SVGD steps of
1e-3, Adam 1e-3 decayed by 0.98 at every 1% of the run):
- metarun: `metarun train experiment=bayesian_maml_sinusoid trainer.iterations=<n>
  scheduler.step_size=<n / 100> compile=false threads=1`, then `metarun eval checkpoint=last`;
- the authors' `bmaml_main.py`, run as published through TensorFlow's v1 compatibility layer
  (`tf.contrib`'s Xavier initialiser is TensorFlow's glorot_uniform), with `--num_epochs` set so
  that it makes the same number of updates, its last weights kept.
Each side trains on its own draw of 100 training tasks; both are tested on the same 600 test
tasks of metarun's preset (5 support points, one step, MSE of the particles' mean prediction on
100 points), exported here. Prints and writes (`--out`) each side's test MSE with its 95%
interval and seconds per update (the authors' training loop timed whole: it includes their
evaluation of 100 tasks every 100 updates; the graph's construction is left out).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from parity import side_by_side

REPO = Path(__file__).resolve().parent.parent
PRESET = "experiment=bayesian_maml_sinusoid"


def export_test_tasks(path: Path) -> None:
    """metarun's test tasks of the preset, as arrays [tasks, points, 1]."""
    import torch
    from hydra import compose, initialize_config_dir

    from metarun.build import CONFIG_DIR, build
    from metarun.protocol import eval_sampler

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", [PRESET])
    test = eval_sampler(cfg, build("dataset", cfg.dataset), "test", torch.device("cpu"))
    plan = test.draw(cfg.eval.episodes, torch.Generator().manual_seed(cfg.eval.seed))
    parts = [test.build(part).tensors for part in plan.split(cfg.eval.batch_tasks)]
    names = ("support_x", "support_y", "query_x", "query_y")
    np.savez(path, **{n: torch.cat([p[i] for p in parts]).numpy() for i, n in enumerate(names)})


def authors_side(source: Path, iterations: int, tasks: Path, output: Path) -> None:
    """Runs in the TensorFlow environment: the authors' training, then our test tasks."""
    import types

    import tensorflow.compat.v1 as tf
    from tensorflow.python.platform import flags  # noqa: F401  (theirs; imported before the swap)

    tf.disable_v2_behavior()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    xavier = lambda dtype=tf.float32, **kwargs: tf.glorot_uniform_initializer(dtype=dtype)
    tf.contrib = types.SimpleNamespace(layers=types.SimpleNamespace(xavier_initializer=xavier))
    for name in ("contrib", "contrib.layers", "contrib.layers.python"):
        sys.modules[f"tensorflow.{name}"] = types.ModuleType(f"tensorflow.{name}")
    sys.modules["tensorflow.contrib.layers.python.layers"] = types.ModuleType("layers")
    sys.modules["tensorflow"] = tf
    sys.path.insert(0, str(source))
    epochs = iterations // 10  # 100 training tasks in batches of 10: 10 updates an epoch
    protocol = "finite=True train_total_num_tasks=100 test_total_num_tasks=100 num_particles=10"
    protocol += f" num_tasks=10 few_k_shot=5 val_k_shot=5 num_epochs={epochs}"
    protocol += f" logdir={output.parent / 'bmaml_log'}"
    sys.argv = [sys.argv[0], *(f"--{setting}" for setting in protocol.split())]
    os.chdir(output.parent)
    import bmaml_main

    built = []

    class Recorded(bmaml_main.BMAML):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            built.append(self)

    timed = []
    train = bmaml_main.train

    def timed_train(*args, **kwargs) -> None:
        start = time.perf_counter()
        train(*args, **kwargs)
        timed.append((time.perf_counter() - start) / iterations)

    bmaml_main.BMAML, bmaml_main.train = Recorded, timed_train
    bmaml_main.main()
    seconds = timed[0]
    session, model, test = tf.get_default_session(), built[0], np.load(tasks)
    mse = []
    for t in range(len(test["support_x"])):
        places = (model.follow_x, model.follow_y, model.valid_x, model.valid_y)
        names = ("support_x", "support_y", "query_x", "query_y")
        feed = {place: test[name][t : t + 1] for place, name in zip(places, names)}
        mse.append(session.run(model.eval_valid_loss[1], feed))
    mse = np.array(mse)
    summary = {
        "mse": {
            "mean": float(mse.mean()),
            "ci95": float(1.96 * mse.std(ddof=1) / math.sqrt(len(mse))),
        },
        "seconds_per_update": seconds,
    }
    output.write_text(json.dumps(summary))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--tensorflow-python", required=True)
    parser.add_argument("--iterations", type=int, required=True)
    parser.add_argument("--folder", type=Path, default=REPO / "outputs" / "parity")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    tasks = args.folder / "bmaml_test_tasks.npz"
    export_test_tasks(tasks)
    mine = args.folder / f"bmaml_metarun_{args.iterations}"
    theirs = (args.folder / f"bmaml_authors_{args.iterations}.json").resolve()
    every = max(1, args.iterations // 5)
    budget = {
        "iterations": args.iterations,
        "val_every": every,
        "log_every": every,
        "ckpt_every": every,
    }
    run = [
        PRESET,
        *(f"trainer.{key}={value}" for key, value in budget.items()),
        f"scheduler.step_size={max(1, args.iterations // 100)}",
        "compile=false",
        "threads=1",
    ]
    command = [sys.executable, "-m", "metarun", "train", *run, f"hydra.run.dir={mine}"]
    arguments = [args.source.resolve(), args.iterations, tasks.resolve(), theirs]
    peer = [args.tensorflow_python, __file__, "--authors-side", *map(str, arguments)]
    side_by_side(command, mine.with_suffix(".log"), peer, theirs.with_suffix(".log"))
    evaluate = [sys.executable, "-m", "metarun", "eval", f"run_dir={mine}", "checkpoint=last"]
    subprocess.run(evaluate, cwd=REPO, check=True, capture_output=True)
    rows = [json.loads(line) for line in (mine / "metrics.jsonl").read_text().splitlines()]
    ours = {
        "mse": json.loads((mine / "eval.json").read_text())["mse"],
        "seconds_per_update": statistics.median(10 / r["tasks_per_s"] for r in rows[1:]),
    }
    results = {"metarun": ours, "authors": json.loads(theirs.read_text())}
    print("| side | updates | test MSE (95%) | s per update |")
    print("|---|---|---|---|")
    for side, summary in results.items():
        mse = f"{summary['mse']['mean']:.3f} +- {summary['mse']['ci95']:.3f}"
        print(f"| {side} | {args.iterations} | {mse} | {summary['seconds_per_update']:.4f} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--authors-side"]:
        source, iterations, tasks, output = sys.argv[2:6]
        authors_side(Path(source), int(iterations), Path(tasks), Path(output))
    else:
        main()
