"""Time to accuracy: wall time until fixed validation episodes first reach a target accuracy.

    python scripts/bench.py --time-to-accuracy maml protonet --seeds 0 1 2

For each target and seed, two implementations from a fresh process, clock started at launch:
- metarun: the preset's default command (`metarun train experiment=<preset> seed=<s>`, every
  runtime setting `auto`), validating every `every` iterations on `episodes` episodes; stopped
  with SIGTERM once a validation reaches the target.
- learn2learn, written the way its examples train (MAML: `l2l.algorithms.MAML`, clone, adapt,
  backward per task; ProtoNet: embeddings, prototypes, negative squared distances), given every
  core as threads. Same episodes (metarun's sampler, seeded alike: the training stream and the
  validation episodes are identical), same initial weights, optimiser, schedule and
  hyperparameters (the preset's).
A run that has not reached the target after `limit` seconds is reported as not reached.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Target:
    preset: str
    accuracy: float
    every: int  # validation cadence, iterations
    episodes: int = 100  # validation episodes


TARGETS = {
    "maml": Target("maml_omniglot_5w1s", 0.95, every=100),
    "protonet": Target("protonet_omniglot_5w1s", 0.97, every=50),
}


def _settings(target: Target, seed: int) -> list[str]:
    return [
        f"experiment={target.preset}",
        f"seed={seed}",
        f"trainer.val_every={target.every}",
        f"trainer.val_episodes={target.episodes}",
        f"trainer.log_every={target.every}",
    ]


def _watch(process: subprocess.Popen, rows, target: Target, start: float, limit: float) -> dict:
    """Reads validation rows as they come; the first at or above the target ends the run."""
    seen = []
    while time.perf_counter() - start < limit:
        for row in rows():
            if "val_accuracy" not in row or row in seen:
                continue
            seen.append(row)
            if row["val_accuracy"] >= target.accuracy:
                seconds = time.perf_counter() - start
                return {
                    "reached": True,
                    "seconds": seconds,
                    "iteration": row["iteration"],
                    "val_accuracy": row["val_accuracy"],
                    "curve": seen,
                }
        if process.poll() is not None:
            break
        time.sleep(0.5)
    return {"reached": False, "seconds": time.perf_counter() - start, "curve": seen}


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _rows(path: Path):
    """The complete JSON lines written to `path` so far."""

    def rows() -> list[dict]:
        lines = path.read_text().splitlines() if path.is_file() else []
        return [json.loads(line) for line in lines if line.endswith("}")]

    return rows


def _timed(
    command: list[str],
    rows_file: Path,
    target: Target,
    limit: float,
    log: Path,
    env: dict | None = None,
) -> dict:
    start = time.perf_counter()
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=output, stderr=output)
        try:
            return _watch(process, _rows(rows_file), target, start, limit)
        finally:
            _stop(process)


def run_metarun(target: Target, seed: int, limit: float, folder: Path) -> dict:
    command = [
        sys.executable,
        "-m",
        "metarun",
        "train",
        *_settings(target, seed),
        f"hydra.run.dir={folder}",
    ]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # metarun's own plan
    log = folder.with_suffix(".log")
    result = _timed(command, folder / "metrics.jsonl", target, limit, log, env)
    banner = [line for line in log.read_text().splitlines() if line.startswith("  device ")]
    result["setting"] = "; ".join(banner[0].strip().split(";")[:2]) if banner else "?"
    return result


def run_learn2learn(target: Target, seed: int, limit: float, folder: Path) -> dict:
    rows = folder.with_suffix(".jsonl")
    command = [sys.executable, __file__, "--learn2learn", target.preset, str(seed), str(rows)]
    result = _timed(command, rows, target, limit, folder.with_suffix(".log"))
    result["setting"] = f"{len(os.sched_getaffinity(0))} threads"
    return result


def learn2learn_training(preset: str, seed: int, output: Path) -> None:
    """Trains with learn2learn, writing each validation as a JSON line (the parent times it)."""
    import learn2learn as l2l
    from bench import stock_conv4
    from hydra import compose, initialize_config_dir

    from metarun.build import CONFIG_DIR, build, build_algorithm
    from metarun.protocol import eval_sampler, train_sampler, validation_seed
    from metarun.runtime import seed_everything

    target = next(t for t in TARGETS.values() if t.preset == preset)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", _settings(target, seed))
    seed_everything(cfg.seed)
    dataset = build("dataset", cfg.dataset)
    algo = build_algorithm(cfg, dataset)  # metarun's initial weights for this seed
    maml = cfg.algo._target_.endswith("MAML")
    strided = cfg.backbone.downsample == "stride"
    if cfg.backbone.average_pool != strided:
        raise SystemExit("learn2learn's model here is max-pooled, or strided and averaged")
    model = stock_conv4(
        cfg.task.ways if maml else None, running_statistics=cfg.bn == "running", strided=strided
    )
    with torch.no_grad():
        for mine, theirs in zip(model.parameters(), algo.parameters(), strict=True):
            mine.copy_(theirs)
    cpu = torch.device("cpu")
    train = train_sampler(cfg, dataset, algo, cpu)
    validation = eval_sampler(cfg, dataset, "val", cpu)
    plan = validation.draw(target.episodes, torch.Generator().manual_seed(validation_seed(cfg)))
    episodes = validation.build(plan)
    generator = torch.Generator().manual_seed(cfg.seed)
    if maml:
        learner = l2l.algorithms.MAML(model, lr=cfg.algo.inner_lr, first_order=False)
        step, accuracy = _maml_step(learner, cfg.algo.inner_steps), _maml_accuracy(learner, cfg)
    else:
        learner = model
        step, accuracy = _protonet_step(model), _protonet_accuracy(model, cfg)
    optimizer = torch.optim.Adam(learner.parameters(), lr=cfg.optimizer.lr)
    schedule = (
        torch.optim.lr_scheduler.StepLR(optimizer, cfg.scheduler.step_size, cfg.scheduler.gamma)
        if cfg.get("scheduler")
        else None
    )
    for iteration in range(1, cfg.trainer.iterations + 1):
        optimizer.zero_grad()
        step(train.sample(cfg.task.meta_batch_size, generator))
        optimizer.step()
        if schedule is not None:
            schedule.step()
        if iteration % target.every == 0:
            score = sum(accuracy(episodes, t) for t in range(len(plan))) / len(plan)
            with open(output, "a") as rows:
                rows.write(json.dumps({"iteration": iteration, "val_accuracy": score}) + "\n")


def _maml_step(maml, steps: int):
    def step(batch) -> None:
        for t in range(batch.num_tasks):
            learner = maml.clone()
            for _ in range(steps):
                learner.adapt(F.cross_entropy(learner(batch.support_x[t]), batch.support_y[t]))
            F.cross_entropy(learner(batch.query_x[t]), batch.query_y[t]).backward()
        for p in maml.parameters():
            p.grad.mul_(1.0 / batch.num_tasks)

    return step


def _maml_accuracy(maml, cfg):
    def accuracy(batch, t: int) -> float:
        learner = maml.clone()
        for _ in range(cfg.eval.inner_steps or cfg.algo.inner_steps):
            learner.adapt(F.cross_entropy(learner(batch.support_x[t]), batch.support_y[t]))
        predicted = learner(batch.query_x[t]).argmax(-1)
        return (predicted == batch.query_y[t]).float().mean().item()

    return accuracy


def _prototype_logits(model, support_x, support_y, query_x, ways: int) -> torch.Tensor:
    support = model(support_x)
    prototypes = torch.stack([support[support_y == c].mean(0) for c in range(ways)])
    return -torch.cdist(model(query_x), prototypes).pow(2)


def _protonet_step(model):
    def step(batch) -> None:
        logits = _prototype_logits(
            model, batch.support_x[0], batch.support_y[0], batch.query_x[0], batch.ways
        )
        F.cross_entropy(logits, batch.query_y[0]).backward()

    return step


def _protonet_accuracy(model, cfg):
    @torch.no_grad()
    def accuracy(batch, t: int) -> float:
        model.eval()
        logits = _prototype_logits(
            model, batch.support_x[t], batch.support_y[t], batch.query_x[t], batch.ways
        )
        model.train()
        return (logits.argmax(-1) == batch.query_y[t]).float().mean().item()

    return accuracy


def time_to_accuracy(kinds: list[str], seeds: list[int], limit: float) -> dict:
    """Every (target, seed, implementation), one after another; prints a table as it goes."""
    results: dict = {}
    print("| target | implementation | seed | reached | wall time s | iteration | setting |")
    print("|---|---|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        for kind in kinds:
            target = TARGETS[kind]
            for seed in seeds:
                for name, run in (("metarun", run_metarun), ("learn2learn", run_learn2learn)):
                    folder = Path(scratch) / f"{kind}_{name}_{seed}"
                    result = run(target, seed, limit, folder)
                    results.setdefault(kind, {}).setdefault(name, {})[seed] = result
                    reached = "yes" if result["reached"] else "no"
                    print(
                        f"| {kind} to {target.accuracy:.0%} | {name} | {seed} | {reached} | "
                        f"{result['seconds']:.0f} | {result.get('iteration', '-')} | "
                        f"{result['setting']} |",
                        flush=True,
                    )
    for kind, by_name in results.items():
        times = {
            n: [r["seconds"] for r in runs.values() if r["reached"]] for n, runs in by_name.items()
        }
        if all(len(t) == len(seeds) for t in times.values()):
            mine, theirs = statistics.mean(times["metarun"]), statistics.mean(times["learn2learn"])
            print(
                f"{kind}: metarun {mine:.0f} s (min {min(times['metarun']):.0f}, max "
                f"{max(times['metarun']):.0f}), learn2learn {theirs:.0f} s (min "
                f"{min(times['learn2learn']):.0f}, max {max(times['learn2learn']):.0f}): "
                f"{mine / theirs:.2f}x its time"
            )
    return results


if __name__ == "__main__" and sys.argv[1:2] == ["--learn2learn"]:
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    learn2learn_training(sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))
