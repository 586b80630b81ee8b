"""Parity with learn2learn at equal budget: the same preset trained by metarun and by
learn2learn, side by side, then tested on the same episodes.

    python scripts/parity.py maml anil meta_sgd protonet --iterations 500 --seeds 0

For each system and seed the two run at the same time, one thread each (the machine's two
cores), from identical initial weights on identical training episodes (metarun's sampler seeded
alike), for the same number of updates, with the preset's hyperparameters:
- metarun: `metarun train experiment=<preset> seed=<s> trainer.iterations=<n> threads=1
  processes=1`, its best-validation checkpoint tested on the preset's 600 test episodes;
- learn2learn, written the way its examples train (`l2l.algorithms.MAML` for MAML and ANIL's
  head, `l2l.algorithms.MetaSGD`, plain prototypes), validated on the same fixed episodes at the
  same iterations, its best-validation weights tested on the same 600 test episodes.
Prints each side's validation curve, test accuracy with its 95% interval and seconds per update
(the median over the validation windows of training time alone, so compilation, validation and
test are left out), and writes them to `--out` as JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from time_to_accuracy import _maml_accuracy, _maml_step, _protonet_accuracy, _protonet_step

REPO = Path(__file__).resolve().parent.parent
PRESETS = {
    "maml": "maml_omniglot_5w1s",
    "anil": "anil_omniglot_5w1s",
    "meta_sgd": "meta_sgd_omniglot_5w1s",
    "protonet": "protonet_omniglot_5w1s",
}


def settings(system: str, seed: int, iterations: int, every: int) -> list[str]:
    return [
        f"experiment={PRESETS[system]}",
        f"seed={seed}",
        f"trainer.iterations={iterations}",
        f"trainer.val_every={every}",
        f"trainer.log_every={every}",
        f"trainer.ckpt_every={iterations}",
        "trainer.val_episodes=100",
    ]


def interval(scores: torch.Tensor) -> dict:
    """Mean and 95% half-width (normal approximation, as metarun reports)."""
    half = 1.96 * scores.std().item() / math.sqrt(len(scores))
    return {"mean": scores.mean().item(), "ci95": half}


def learn2learn_side(system: str, seed: int, iterations: int, every: int, output: Path) -> None:
    """Trains and tests with learn2learn in this process (one thread); writes a JSON summary."""
    import learn2learn as l2l
    from bench import stock_conv4
    from hydra import compose, initialize_config_dir

    from metarun.build import CONFIG_DIR, build, build_algorithm
    from metarun.protocol import eval_sampler, train_sampler, validation_seed
    from metarun.runtime import seed_everything

    torch.set_num_threads(1)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", settings(system, seed, iterations, every))
    seed_everything(cfg.seed)
    dataset = build("dataset", cfg.dataset)
    algo = build_algorithm(cfg, dataset)  # metarun's initial weights for this seed
    classifier = system != "protonet"
    model = stock_conv4(cfg.task.ways if classifier else None)
    cpu = torch.device("cpu")
    if system == "meta_sgd":
        learner = l2l.algorithms.MetaSGD(model, lr=cfg.algo.inner_lr)
    elif system == "anil":
        learner = torch.nn.ModuleDict(
            {"body": model[:-1], "head": l2l.algorithms.MAML(model[-1], lr=cfg.algo.inner_lr)}
        )
    elif system == "maml":
        learner = l2l.algorithms.MAML(model, lr=cfg.algo.inner_lr, first_order=False)
    else:
        learner = model
    with torch.no_grad():  # metarun's parameter order: backbone, head, then (Meta-SGD) rates
        for mine, theirs in zip(learner.parameters(), algo.parameters(), strict=True):
            mine.copy_(theirs)
    steps, test_steps = cfg.algo.get("inner_steps"), cfg.eval.inner_steps
    if system == "anil":
        step, accuracy = _anil_step(learner, steps), _anil_accuracy(learner, test_steps or steps)
    elif classifier:
        step, accuracy = _maml_step(learner, steps), _maml_accuracy(learner, cfg)
    else:
        step, accuracy = _protonet_step(model), _protonet_accuracy(model, cfg)
    optimizer = torch.optim.Adam(learner.parameters(), lr=cfg.optimizer.lr)
    schedule = (
        torch.optim.lr_scheduler.StepLR(optimizer, cfg.scheduler.step_size, cfg.scheduler.gamma)
        if cfg.get("scheduler")
        else None
    )
    train = train_sampler(cfg, dataset, algo, cpu)
    validation = eval_sampler(cfg, dataset, "val", cpu)
    seeded = torch.Generator().manual_seed(validation_seed(cfg))
    plan = validation.draw(cfg.trainer.val_episodes, seeded)
    val_episodes = validation.build(plan)
    generator = torch.Generator().manual_seed(cfg.seed)
    curve, windows, best, best_state, seconds = [], [], -1.0, None, 0.0
    for iteration in range(1, iterations + 1):
        start = time.perf_counter()
        optimizer.zero_grad()
        step(train.sample(cfg.task.meta_batch_size, generator))
        optimizer.step()
        if schedule is not None:
            schedule.step()
        seconds += time.perf_counter() - start
        if iteration % every == 0:
            windows.append(seconds / every)
            seconds = 0.0
            score = sum(accuracy(val_episodes, t) for t in range(len(plan))) / len(plan)
            curve.append([iteration, score])
            if score > best:
                best, best_state = score, copy.deepcopy(learner.state_dict())
    learner.load_state_dict(best_state)
    test = eval_sampler(cfg, dataset, "test", cpu)
    plan = test.draw(cfg.eval.episodes, torch.Generator().manual_seed(cfg.eval.seed))
    scores = []
    for part in plan.split(cfg.eval.batch_tasks):
        episodes = test.build(part)
        scores += [accuracy(episodes, t) for t in range(episodes.num_tasks)]
    summary = {
        "curve": curve,
        "test": interval(torch.tensor(scores)),
        "seconds_per_update": statistics.median(windows),
    }
    output.write_text(json.dumps(summary))


def _anil_step(learner, steps: int):
    def step(batch) -> None:
        for t in range(batch.num_tasks):
            head = learner["head"].clone()
            features = learner["body"](batch.support_x[t])
            for _ in range(steps):
                head.adapt(F.cross_entropy(head(features), batch.support_y[t]))
            queries = head(learner["body"](batch.query_x[t]))
            (F.cross_entropy(queries, batch.query_y[t]) / batch.num_tasks).backward()

    return step


def _anil_accuracy(learner, steps: int):
    def accuracy(batch, t: int) -> float:
        head = learner["head"].clone()
        features = learner["body"](batch.support_x[t])
        for _ in range(steps):
            head.adapt(F.cross_entropy(head(features), batch.support_y[t]))
        predicted = head(learner["body"](batch.query_x[t])).argmax(-1)
        return (predicted == batch.query_y[t]).float().mean().item()

    return accuracy


def metarun_summary(folder: Path) -> dict:
    """The run's validation curve, test accuracy and training seconds per update (from its
    logged tasks per second, one row per validation window)."""
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    results = json.loads((folder / "results.json").read_text())
    tasks = OmegaConf.load(folder / "config.yaml").task.meta_batch_size
    return {
        "curve": [[r["iteration"], r["val_accuracy"]] for r in rows if "val_accuracy" in r],
        "test": {k: results["accuracy"][k] for k in ("mean", "ci95")},
        "seconds_per_update": statistics.median(
            tasks / r["tasks_per_s"] for r in rows if "tasks_per_s" in r
        ),
        "checkpoint_iteration": results["iteration"],
    }


def side_by_side(command: list, log: Path, peer: list, peer_log: Path) -> None:
    """Runs metarun's command and the reference's at once, one thread each; stops on a failure."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out, open(peer_log, "w") as peer_out:
        processes = [
            subprocess.Popen(command, cwd=REPO, stdout=out, stderr=out, env=environment),
            subprocess.Popen(peer, cwd=REPO, stdout=peer_out, stderr=peer_out, env=environment),
        ]
        for process in processes:
            if process.wait() != 0:
                raise SystemExit(f"{process.args[:4]} failed; see {log} and {peer_log}")


def parity(system: str, seed: int, iterations: int, every: int, folder: Path) -> dict:
    """Both sides at once; their summaries."""
    folder.mkdir(parents=True, exist_ok=True)
    mine = folder / f"{system}_metarun_{seed}"
    theirs = folder / f"{system}_learn2learn_{seed}.json"
    run = [*settings(system, seed, iterations, every), "threads=1", "processes=1"]
    command = [sys.executable, "-m", "metarun", "train", *run, f"hydra.run.dir={mine}"]
    budget = [str(seed), str(iterations), str(every)]
    peer = [sys.executable, __file__, "--learn2learn", system, *budget, str(theirs)]
    side_by_side(command, mine.with_suffix(".log"), peer, theirs.with_suffix(".log"))
    return {"metarun": metarun_summary(mine), "learn2learn": json.loads(theirs.read_text())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("systems", nargs="+", choices=sorted(PRESETS))
    parser.add_argument(
        "--iterations", type=int, nargs="+", required=True, help="one for all, or one per system"
    )
    parser.add_argument("--every", type=int, default=100, help="validation cadence")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--folder", type=Path, default=REPO / "outputs" / "parity")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    budgets = args.iterations * len(args.systems) if len(args.iterations) == 1 else args.iterations
    results = {}
    print("| system | seed | updates | side | validation curve | test (95%) | s per update |")
    print("|---|---|---|---|---|---|---|", flush=True)
    for system, iterations in zip(args.systems, budgets, strict=True):
        for seed in args.seeds:
            both = parity(system, seed, iterations, args.every, args.folder)
            results[f"{system}/{seed}"] = {"iterations": iterations, **both}
            for side, summary in both.items():
                curve = ", ".join(f"{100 * a:.1f} ({i})" for i, a in summary["curve"])
                test = summary["test"]
                score = f"{100 * test['mean']:.2f} +- {100 * test['ci95']:.2f}"
                row = [system, seed, iterations, side, curve, score]
                row.append(f"{summary['seconds_per_update']:.3f}")
                print("| " + " | ".join(map(str, row)) + " |", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--learn2learn"]:
        name, seed, iterations, every, output = sys.argv[2:7]
        learn2learn_side(name, int(seed), int(iterations), int(every), Path(output))
    else:
        main()
