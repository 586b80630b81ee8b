"""The real `metarun` command end to end: train -> run folder -> eval -> eval.json, and a sweep."""

from __future__ import annotations

import json

import torch
from conftest import TINY, metarun


def test_train_writes_the_run_folder(trained_run):
    for name in (
        ".hydra/config.yaml",
        "config.yaml",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
        "metrics.jsonl",
        "results.json",
    ):
        assert (trained_run / name).is_file(), name
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert (
        rows[-1]["iteration"] == 4 and "tasks_per_s" in rows[-1] and "val_accuracy_ci95" in rows[-1]
    )
    results = json.loads((trained_run / "results.json").read_text())
    assert results["episodes"] == 6 and set(results["accuracy"]) == {"mean", "ci95"}
    assert {
        "split",
        "rotations",
        "batchnorm",
        "inner_steps_train",
        "inner_steps_test",
        "queries_test",
        "episodes",
        "eval_seed",
    } <= set(results["protocol"])


def test_checkpoint_holds_everything_to_resume(trained_run):
    state = torch.load(trained_run / "checkpoints" / "last.pt", weights_only=True)
    assert {"model", "optimizer", "iteration", "rng", "best_score", "config"} <= set(state)
    assert state["iteration"] == 4 and state["config"]["task"]["ways"] == 5


def test_eval_reproduces_the_test_result_and_writes_eval_json(trained_run, cli_env):
    done = metarun("eval", f"run_dir={trained_run}", env=cli_env)
    assert done.returncode == 0, done.stderr[-3000:]
    evaluated = json.loads((trained_run / "eval.json").read_text())
    trained = json.loads((trained_run / "results.json").read_text())
    assert evaluated["accuracy"] == trained["accuracy"], "same checkpoint, same episodes"
    assert "evaluating" in done.stderr  # a progress bar over the episodes


def test_eval_options_reach_the_protocol(trained_run, cli_env, tmp_path):
    output = tmp_path / "other.json"
    done = metarun(
        "eval",
        f"run_dir={trained_run}",
        "checkpoint=last",
        "eval.episodes=4",
        "eval.inner_steps=3",
        f"eval.output={output}",
        env=cli_env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(output.read_text())
    assert result["episodes"] == 4 and result["protocol"]["inner_steps_test"] == 3
    assert result["checkpoint"].endswith("last.pt")


def test_multirun_sweep_prints_and_writes_a_report(cli_env, tmp_path):
    done = metarun(
        "train",
        "-m",
        *TINY,
        "trainer.iterations=2",
        "algo=maml,fomaml",
        f"hydra.sweep.dir={tmp_path}",
        env=cli_env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Sweep report" in done.stdout
    assert (
        "| algo | test accuracy |" in done.stdout
        and "| fomaml |" in done.stdout
        and "| maml |" in done.stdout
    )
    assert len(list(tmp_path.glob("*/results.json"))) == 2
    assert (tmp_path / "report.md").is_file() and (tmp_path / "report.csv").is_file()
