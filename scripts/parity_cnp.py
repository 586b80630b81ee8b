"""Parity of the Conditional Neural Process with the authors' notebook at equal budget.

    python scripts/parity_cnp.py --notebook conditional_neural_process.ipynb \
        --tensorflow-python <python with tensorflow, tensorflow-probability, tf-keras> \
        --iterations 20000

(the notebook from deepmind/neural-processes).

Both train at the same time, one thread each:
- metarun: `metarun train experiment=cnp_gp_1d algo=cnp trainer.iterations=<n> threads=1`, then
  `metarun eval checkpoint=last` (the notebook keeps its last weights too);
- the notebook: its own classes (GPCurvesReader, DeterministicEncoder/Decoder/Model), read from
  the .ipynb at run time and run under TensorFlow's v1 compatibility layer (`tf.contrib`'s
  distributions are tensorflow-probability's), with the notebook's settings: batch 64, up to
  10 context points, encoder 4 x 128, decoder [128, 128, 2], Adam 1e-4.
Each side trains on its own curves from the same Gaussian process, and both are tested on the
same 1,000 test curves of metarun's preset (5 contexts, 400 evenly spaced targets), exported
here. Prints and writes (`--out`) each side's test MSE and NLL per target with 95% intervals
and seconds per update. The notebook's code is read from where it was fetched; none of it is
kept in this repository.
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
PRESET = ["experiment=cnp_gp_1d", "algo=cnp"]


def export_test_curves(path: Path) -> None:
    """metarun's test episodes of the preset, as arrays [episodes, points, 1]."""
    import torch
    from hydra import compose, initialize_config_dir

    from metarun.build import CONFIG_DIR, build
    from metarun.protocol import eval_sampler

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", PRESET)
    test = eval_sampler(cfg, build("dataset", cfg.dataset), "test", torch.device("cpu"))
    plan = test.draw(cfg.eval.episodes, torch.Generator().manual_seed(cfg.eval.seed))
    parts = [test.build(part).tensors for part in plan.split(cfg.eval.batch_tasks)]
    names = ("context_x", "context_y", "target_x", "target_y")
    arrays = {n: torch.cat([p[i] for p in parts]).numpy() for i, n in enumerate(names)}
    np.savez(path, **arrays)


def interval(values: np.ndarray) -> dict:
    return {
        "mean": float(values.mean()),
        "ci95": float(1.96 * values.std(ddof=1) / math.sqrt(len(values))),
    }


def notebook_side(notebook: Path, iterations: int, curves: Path, output: Path) -> None:
    """Runs in the TensorFlow environment: trains the notebook's CNP and tests it."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import collections
    import types

    import tensorflow.compat.v1 as tf
    import tensorflow_probability as tfp

    tf.disable_v2_behavior()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.contrib = types.SimpleNamespace(distributions=tfp.distributions)
    cells = json.loads(notebook.read_text())["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    namespace = {"tf": tf, "np": np, "collections": collections}
    for source in code:
        if "class " in source or "namedtuple(" in source:
            exec(source, namespace)  # the notebook's definitions, nothing else of it

    data = namespace["GPCurvesReader"](batch_size=64, max_num_context=10).generate_curves()
    model = namespace["DeterministicModel"]([128, 128, 128, 128], [128, 128, 2])
    log_prob, _, _ = model(
        data.query, data.num_total_points, data.num_context_points, data.target_y
    )
    train_step = tf.train.AdamOptimizer(1e-4).minimize(-tf.reduce_mean(log_prob))

    test = np.load(curves)
    batch, contexts, targets = 100, test["context_x"].shape[1], test["target_x"].shape[1]
    holders = {
        name: tf.placeholder(tf.float32, [batch, contexts if "context" in name else targets, 1])
        for name in test.files
    }
    query = ((holders["context_x"], holders["context_y"]), holders["target_x"])
    test_log_prob, mean, _ = model(query, targets, contexts, holders["target_y"])

    windows, every = [], max(1, iterations // 20)
    with tf.Session() as session:
        session.run(tf.global_variables_initializer())
        start = time.perf_counter()
        for iteration in range(1, iterations + 1):
            session.run(train_step)
            if iteration % every == 0:
                windows.append((time.perf_counter() - start) / every)
                start = time.perf_counter()
        mse, nll = [], []
        for first in range(0, len(test["target_x"]), batch):
            feed = {holders[n]: test[n][first : first + batch] for n in test.files}
            log_p, mu = session.run([test_log_prob, mean], feed)
            mse.append(((mu - feed[holders["target_y"]]) ** 2).mean((1, 2)))
            nll.append(-log_p.mean(1))
    summary = {
        "mse": interval(np.concatenate(mse)),
        "nll": interval(np.concatenate(nll)),
        "seconds_per_update": statistics.median(windows),
    }
    output.write_text(json.dumps(summary))


def metarun_command(folder: Path, iterations: int) -> list[str]:
    every = max(1, iterations // 4)
    budget = [
        f"trainer.{key}={value}"
        for key, value in (("iterations", iterations), ("val_every", every), ("ckpt_every", every))
    ]
    command = [
        sys.executable,
        "-m",
        "metarun",
        "train",
        *PRESET,
        *budget,
        "threads=1",
        "compile=false",
        f"hydra.run.dir={folder}",
    ]
    return command


def metarun_summary(folder: Path) -> dict:
    command = [sys.executable, "-m", "metarun", "eval", f"run_dir={folder}", "checkpoint=last"]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    results = json.loads((folder / "eval.json").read_text())
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return {
        "mse": results["mse"],
        "nll": results["calibration"]["nll"],
        "seconds_per_update": statistics.median(64 / r["tasks_per_s"] for r in rows[1:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebook", type=Path, required=True)
    parser.add_argument("--tensorflow-python", required=True)
    parser.add_argument("--iterations", type=int, required=True)
    parser.add_argument("--folder", type=Path, default=REPO / "outputs" / "parity")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    curves = args.folder / "gp_1d_test_curves.npz"
    export_test_curves(curves)
    mine = args.folder / f"cnp_metarun_{args.iterations}"
    theirs = args.folder / f"cnp_notebook_{args.iterations}.json"
    arguments = [args.notebook, args.iterations, curves, theirs]
    peer = [args.tensorflow_python, __file__, "--notebook-side", *map(str, arguments)]
    side_by_side(
        metarun_command(mine, args.iterations),
        mine.with_suffix(".log"),
        peer,
        theirs.with_suffix(".log"),
    )
    results = {"metarun": metarun_summary(mine), "notebook": json.loads(theirs.read_text())}
    print("| side | updates | test MSE (95%) | test NLL per target (95%) | s per update |")
    print("|---|---|---|---|---|")
    for side, summary in results.items():
        mse, nll = summary["mse"], summary["nll"]
        cells = [f"{m['mean']:.4f} +- {m['ci95']:.4f}" for m in (mse, nll)]
        cells.append(f"{summary['seconds_per_update']:.4f}")
        print(f"| {side} | {args.iterations} | " + " | ".join(cells) + " |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--notebook-side"]:
        notebook, iterations, curves, output = sys.argv[2:6]
        notebook_side(Path(notebook), int(iterations), Path(curves), Path(output))
    else:
        main()
