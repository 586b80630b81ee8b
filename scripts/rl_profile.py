"""Where a meta-RL iteration's time goes: sampling (environment steps and the policy's actions),
the linear baseline and advantages, the meta-gradient, the conjugate-gradient solve (Fisher
products) and the line search. Runs a few meta-iterations of a preset exactly as `metarun
train` does (engine, then optimiser step) with timers around those pieces, and prints seconds
per iteration and environment steps per second. Run it on an idle machine:

    python scripts/rl_profile.py experiment=maml_rl_navigation_2d --iterations 5
    python scripts/rl_profile.py experiment=maml_rl_half_cheetah_dir --iterations 2
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from functools import wraps

import torch
from hydra import compose, initialize_config_dir

from metarun.algorithms import maml_rl
from metarun.build import CONFIG_DIR, build, build_algorithm, build_optimizer
from metarun.data import environments
from metarun.engine import make_engine
from metarun.optimizers import trpo
from metarun.protocol import train_sampler
from metarun.runtime import resolve_device

SECONDS: dict[str, float] = defaultdict(float)
STEPS = {"environment": 0}


def timed(owner, name: str, phase: str) -> None:
    """Replaces owner.name with a copy that adds its wall time to SECONDS[phase]."""
    original = getattr(owner, name)

    @wraps(original)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            SECONDS[phase] += time.perf_counter() - start

    setattr(owner, name, wrapper)


def count_steps() -> None:
    rollout = environments.EnvironmentTasks.rollout

    def counted(self, policy, trajectories, round):
        result = rollout(self, policy, trajectories, round)
        STEPS["environment"] += result.steps
        return result

    environments.EnvironmentTasks.rollout = counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", default=["experiment=maml_rl_navigation_2d"])
    parser.add_argument("--iterations", type=int, default=5)
    args = parser.parse_args()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", args.overrides)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    dataset = build("dataset", cfg.dataset)
    algo = build_algorithm(cfg, dataset).to(device)
    engine = make_engine(cfg, algo, device)
    sampler = train_sampler(cfg, dataset, algo, device)
    optimizer, _ = build_optimizer(cfg, algo)
    generator = torch.Generator().manual_seed(cfg.seed)

    count_steps()
    timed(environments.EnvironmentTasks, "rollout", "sampling")
    timed(maml_rl, "advantages", "baseline and advantages")
    timed(engine, "meta_backward", "meta-gradient (incl. sampling, baseline)")
    timed(maml_rl.MetaObjective, "fisher_product", "Fisher-product graph")
    timed(trpo, "conjugate_gradient", "conjugate gradient")
    timed(trpo.TRPO, "_line_search", "line search")
    started = time.perf_counter()
    for _ in range(args.iterations):
        batch = sampler.sample(cfg.task.meta_batch_size, generator)
        optimizer.zero_grad(set_to_none=True)
        step = engine.meta_backward(algo, batch)
        optimizer.step(step.closure)
    total = time.perf_counter() - started
    n = args.iterations
    print(f"{' '.join(args.overrides)}: {n} meta-iterations, {total / n:.2f} s each")
    gradient_only = SECONDS["meta-gradient (incl. sampling, baseline)"] - (
        SECONDS["sampling"] + SECONDS["baseline and advantages"]
    )
    rows = {
        "sampling": SECONDS["sampling"],
        "baseline and advantages": SECONDS["baseline and advantages"],
        "meta-gradient": gradient_only,
        "conjugate gradient (+ Fisher graph)": SECONDS["conjugate gradient"]
        + SECONDS["Fisher-product graph"],
        "line search": SECONDS["line search"],
    }
    rows["other"] = total - sum(rows.values())
    for phase, seconds in rows.items():
        print(f"  {phase:38s} {seconds / n:7.2f} s/iteration  {100 * seconds / total:5.1f}%")
    steps_per_s = STEPS["environment"] / max(SECONDS["sampling"], 1e-9)
    print(
        f"  environment steps: {STEPS['environment'] // n} per iteration, "
        f"{steps_per_s:,.0f} steps/s while sampling"
    )


if __name__ == "__main__":
    main()
