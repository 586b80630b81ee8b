"""Wall time of meta-training with 1 and with K processes on this machine.

Runs the same short training (default: the MAML Omniglot 5-way 1-shot preset, 32 tasks per
meta-batch) as one process with 1 thread, one process with K threads, and K processes of
1 thread each (metarun's `processes` and `threads` settings), and prints the meta-training
throughput and each process's peak memory. Run it on an idle machine:

    python scripts/distributed_scaling.py --processes 2 --iterations 40
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def train(
    processes: int, threads: int, iterations: int, overrides: list[str], run_dir: Path
) -> dict:
    command = [
        sys.executable,
        "-m",
        "metarun",
        "train",
        *overrides,
        f"trainer.iterations={iterations}",
        f"trainer.log_every={iterations // 4}",
        f"trainer.val_every={iterations}",
        "trainer.val_episodes=32",
        f"trainer.ckpt_every={iterations}",
        "eval.episodes=32",
        "device=cpu",
        f"processes={processes}",
        f"threads={threads}",
        "compile=false",
        f"hydra.run.dir={run_dir}",
    ]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    subprocess.run(
        command, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    timed = [row["tasks_per_s"] for row in rows if "tasks_per_s" in row][
        1:
    ]  # the first window warms up
    training = json.loads((run_dir / "results.json").read_text())["training"]
    return {
        "tasks_per_s": sum(timed) / len(timed),
        "wall_time_s": training["wall_time_s"],
        "peak_memory_mb": training["peak_memory_mb"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("overrides", nargs="*", default=["experiment=maml_omniglot_5w1s"])
    args = parser.parse_args()
    k = args.processes
    settings = [
        (1, 1, "1 process, 1 thread"),
        (1, k, f"1 process, {k} threads"),
        (k, 1, f"{k} processes (gloo), 1 thread each"),
    ]
    print(f"{' '.join(args.overrides)}, {args.iterations} iterations")
    print("| setting | meta-training tasks/s | training wall time (s) | peak MB per process |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for index, (processes, threads, name) in enumerate(settings):
            result = train(
                processes, threads, args.iterations, args.overrides, Path(folder) / str(index)
            )
            memory = ", ".join(f"{m:.0f}" for m in result["peak_memory_mb"])
            print(
                f"| {name} | {result['tasks_per_s']:.1f} | {result['wall_time_s']:.1f} | "
                f"{memory} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
