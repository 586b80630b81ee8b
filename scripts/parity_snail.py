"""Parity of SNAIL with its common PyTorch reimplementation at equal budget.

    python scripts/parity_snail.py --source <eambutu/snail-pytorch>/src --iterations 300

Both run at the same time, one thread each, on the same training episodes (metarun's sampler
seeded alike: Omniglot 5-way 1-shot, 1 query per class, 32 episodes per update, Adam 1e-4 as
snail-pytorch trains):
- metarun: `metarun train experiment=snail_omniglot_5w1s` with 1 shot at training (snail-pytorch
  trains at the test's shot), sequences of 6, the best validation checkpoint tested;
- snail-pytorch's `SnailFewShot`, imported from `--source` and run as written (its CUDA calls
  made no-ops, its byte mask a boolean one, as today's torch requires): each episode's 5 queries
  become 5 sequences of the shuffled support set then that query, so both see the same images
  and predict the same queries.
Both are validated on the same 100 fixed episodes and tested on the same 300 test episodes
(eval.episodes=300: snail-pytorch reads 15 queries a class as 75 sequences, slowly).
Prints each side's validation curve, test accuracy (95%) and seconds per update; writes them to
`--out`. snail-pytorch's attention normalises over the query axis (softmax dim 1) where the
paper normalises over the keys; it runs as published here.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from parity import interval, metarun_summary, side_by_side

REPO = Path(__file__).resolve().parent.parent


def settings(iterations: int, every: int) -> list[str]:
    return [
        "experiment=snail_omniglot_5w1s",
        "task.shots=1",
        "task.min_shots=null",
        "algo.length=6",
        "optimizer.lr=1e-4",
        f"trainer.iterations={iterations}",
        f"trainer.val_every={every}",
        f"trainer.log_every={every}",
        f"trainer.ckpt_every={iterations}",
        "trainer.val_episodes=100",
        "eval.episodes=300",
    ]


def sequences(batch, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """snail-pytorch's inputs from an episode batch: per query, the support set in a random order
    then the query; images [S * 6, C, H, W], one-hot labels [S * 6, ways], query labels [S]."""
    images, labels, targets = [], [], []
    for t in range(batch.num_tasks):
        for q in range(len(batch.query_y[t])):
            order = torch.randperm(len(batch.support_y[t]), generator=generator)
            images += [batch.support_x[t][order], batch.query_x[t][q : q + 1]]
            labels += [batch.support_y[t][order], batch.query_y[t][q : q + 1]]
            targets.append(batch.query_y[t][q])
    one_hot = F.one_hot(torch.cat(labels), batch.ways).float()
    return torch.cat(images), one_hot, torch.stack(targets)


def reference_side(source: Path, iterations: int, every: int, output: Path) -> None:
    """Trains and tests snail-pytorch's model in this process (one thread)."""
    from hydra import compose, initialize_config_dir

    from metarun.build import CONFIG_DIR, build, build_algorithm
    from metarun.protocol import eval_sampler, train_sampler, validation_seed
    from metarun.runtime import seed_everything

    torch.set_num_threads(1)
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # its attention mask calls .cuda()
    torch.ByteTensor = lambda data: torch.tensor(data, dtype=torch.bool)  # masks are boolean now
    sys.path.insert(0, str(source))
    from snail import SnailFewShot

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", settings(iterations, every))
    seed_everything(cfg.seed)
    dataset = build("dataset", cfg.dataset)
    algo = build_algorithm(cfg, dataset)  # for the sampler, as metarun's run draws it
    cpu = torch.device("cpu")
    train = train_sampler(cfg, dataset, algo, cpu)
    model = SnailFewShot(cfg.task.ways, cfg.task.shots, "omniglot", use_cuda=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optimizer.lr)
    order = torch.Generator().manual_seed(cfg.seed)

    def accuracies(batch) -> list[float]:
        model.eval()
        with torch.no_grad():
            per_task = []
            for t in range(batch.num_tasks):
                one = type(batch)(*(x[t : t + 1] for x in batch.tensors), batch.ways)
                x, y, targets = sequences(one, order)
                predicted = model(x, y)[:, -1].argmax(-1)
                per_task.append((predicted == targets).float().mean().item())
        model.train()
        return per_task

    validation = eval_sampler(cfg, dataset, "val", cpu)
    seeded = torch.Generator().manual_seed(validation_seed(cfg))
    val_episodes = validation.build(validation.draw(cfg.trainer.val_episodes, seeded))
    generator = torch.Generator().manual_seed(cfg.seed)
    curve, windows, best, best_state, seconds = [], [], -1.0, None, 0.0
    for iteration in range(1, iterations + 1):
        start = time.perf_counter()
        x, y, targets = sequences(train.sample(cfg.task.meta_batch_size, generator), order)
        optimizer.zero_grad()
        F.cross_entropy(model(x, y)[:, -1], targets).backward()
        optimizer.step()
        seconds += time.perf_counter() - start
        if iteration % every == 0:
            windows.append(seconds / every)
            seconds = 0.0
            score = statistics.mean(accuracies(val_episodes))
            curve.append([iteration, score])
            if score > best:
                best, best_state = score, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    test = eval_sampler(cfg, dataset, "test", cpu)
    plan = test.draw(cfg.eval.episodes, torch.Generator().manual_seed(cfg.eval.seed))
    scores = [s for part in plan.split(cfg.eval.batch_tasks) for s in accuracies(test.build(part))]
    summary = {
        "curve": curve,
        "test": interval(torch.tensor(scores)),
        "seconds_per_update": statistics.median(windows),
    }
    output.write_text(json.dumps(summary))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="snail-pytorch's src folder")
    parser.add_argument("--iterations", type=int, required=True)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--folder", type=Path, default=REPO / "outputs" / "parity")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    mine = args.folder / f"snail_metarun_{args.iterations}"
    theirs = args.folder / f"snail_reference_{args.iterations}.json"
    run = [*settings(args.iterations, args.every), "threads=1", "processes=1"]
    command = [sys.executable, "-m", "metarun", "train", *run, f"hydra.run.dir={mine}"]
    arguments = [args.source, args.iterations, args.every, theirs]
    peer = [sys.executable, __file__, "--reference", *map(str, arguments)]
    side_by_side(command, mine.with_suffix(".log"), peer, theirs.with_suffix(".log"))
    results = {"metarun": metarun_summary(mine), "snail-pytorch": json.loads(theirs.read_text())}
    print("| side | updates | validation curve | test (95%) | s per update |")
    print("|---|---|---|---|---|")
    for side, summary in results.items():
        curve = ", ".join(f"{100 * a:.1f} ({i})" for i, a in summary["curve"])
        test = f"{100 * summary['test']['mean']:.2f} +- {100 * summary['test']['ci95']:.2f}"
        cells = [side, args.iterations, curve, test, f"{summary['seconds_per_update']:.3f}"]
        print("| " + " | ".join(map(str, cells)) + " |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--reference"]:
        source, iterations, every, output = sys.argv[2:6]
        reference_side(Path(source), int(iterations), int(every), Path(output))
    else:
        main()
