"""`metarun report` and `metarun plot` over run folders, and the report every sweep writes."""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import matplotlib.image
import pytest
from conftest import TINY, metarun
from omegaconf import OmegaConf

from metarun.errors import ConfigError
from metarun.report import csv_text, find_runs, markdown, seed_rows


def fake_run(
    folder: Path, overrides: list[str], accuracy: float | None, val: list[float] = (0.5, 0.6)
) -> Path:
    """A run folder as metarun train leaves it (results.json only when it finished)."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / "config.yaml").write_text("seed: 0\n")
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    rows = [
        {
            "iteration": 10 * (i + 1),
            "train_loss": 1.0 / (i + 1),
            "val_accuracy": v,
            "val_accuracy_ci95": 0.02,
        }
        for i, v in enumerate(val)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if accuracy is not None:
        (folder / "results.json").write_text(
            json.dumps(
                {
                    "metric": "accuracy",
                    "accuracy": {"mean": accuracy, "ci95": 0.01},
                    "episodes": 600,
                    "iteration": 20,
                    "training": {"wall_time_s": 12.5, "best_val_accuracy": max(val)},
                }
            )
        )
    return folder


@pytest.fixture
def sweep(tmp_path) -> Path:
    for algo, seed, accuracy in [
        ("maml", 0, 0.90),
        ("maml", 1, 0.92),
        ("anil", 0, 0.80),
        ("anil", 1, 0.86),
    ]:
        fake_run(
            tmp_path / f"algo={algo},seed={seed}",
            [f"algo={algo}", f"seed={seed}", "task.shots=1"],
            accuracy,
        )
    fake_run(tmp_path / "algo=protonet,seed=0", ["algo=protonet", "seed=0", "task.shots=1"], None)
    return tmp_path


def test_the_table_has_a_column_per_varying_setting_and_lists_shared_ones_once(sweep):
    text = markdown(find_runs([sweep]))
    assert "5 runs; shared settings: task.shots=1" in text
    assert (
        "| algo | seed | test accuracy | ci95 | episodes | best iteration | wall time (s) | "
        "folder |" in text
    )
    assert "| maml | 1 | 92.00 | 1.00 | 600 | 20 | 12.5 | algo=maml,seed=1 |" in text
    assert "| protonet | 0 | unfinished |" in text


def test_runs_differing_only_by_seed_get_mean_and_spread(sweep):
    header, rows = seed_rows(find_runs([sweep]))
    assert header == ["algo", "seeds", "mean test accuracy", "std over seeds", "min", "max"]
    by_algo = {row[0]: row for row in rows}
    assert set(by_algo) == {"anil", "maml"}  # protonet has one unfinished seed
    assert by_algo["anil"][1:] == pytest.approx(
        [2, 0.83, statistics.stdev([0.80, 0.86]), 0.80, 0.86]
    )


def test_csv_keeps_full_precision_and_full_paths(sweep):
    rows = list(csv.DictReader(io.StringIO(csv_text(find_runs([sweep])))))
    assert len(rows) == 5
    maml = next(r for r in rows if r["algo"] == "maml" and r["seed"] == "1")
    assert float(maml["test accuracy"]) == 0.92 and Path(maml["folder"]).is_absolute()


def test_report_command_writes_markdown_and_csv(sweep, cli_env, tmp_path):
    output = tmp_path / "report"
    done = metarun("report", str(sweep), "--output", str(output), env=cli_env)
    assert done.returncode == 0, done.stderr
    assert "Over seeds" in done.stdout
    assert (output / "report.md").read_text() == markdown(find_runs([sweep]))
    assert (output / "report.csv").read_text() == csv_text(find_runs([sweep]))


def test_report_of_a_folder_without_runs_says_what_to_pass(tmp_path, cli_env):
    with pytest.raises(ConfigError, match="No run folders"):
        find_runs([tmp_path])
    done = metarun("report", str(tmp_path / "missing"), env=cli_env)
    assert (
        done.returncode == 2 and "is not a folder" in done.stderr and "Traceback" not in done.stderr
    )


def test_plot_command_draws_learning_curves_and_the_sweep(sweep, cli_env, tmp_path):
    done = metarun("plot", str(sweep), "--output", str(tmp_path / "plots"), env=cli_env)
    assert done.returncode == 0, done.stderr
    for name in ("learning_curves.png", "sweep.png"):
        height, width, _ = matplotlib.image.imread(tmp_path / "plots" / name).shape
        assert height > 200 and width > 200


def test_a_single_run_has_learning_curves_and_no_sweep_plot(tmp_path, cli_env):
    run = fake_run(tmp_path / "run", [], 0.9)
    done = metarun("plot", str(run), env=cli_env)
    assert done.returncode == 0, done.stderr
    assert (run / "learning_curves.png").is_file() and not (run / "sweep.png").exists()


@pytest.mark.slow
def test_parallel_launcher_sweep_over_seeds_ends_with_a_report(cli_env, tmp_path):
    done = metarun(
        "train",
        "-m",
        "hydra/launcher=parallel",
        *TINY,
        "trainer.iterations=2",
        "algo=maml,fomaml",
        "seed=0,1",
        f"hydra.sweep.dir={tmp_path}",
        env=cli_env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = find_runs([tmp_path])
    assert len(runs) == 4 and all(run.mean is not None for run in runs)
    report = (tmp_path / "report.md").read_text()
    assert report in done.stdout and "Over seeds" in report
    assert (tmp_path / "report.csv").is_file()


@pytest.mark.slow
def test_optuna_example_searches_the_inner_loop_on_validation(cli_env, tmp_path):
    done = metarun(
        "train",
        "-m",
        "hydra/sweeper=inner_loop_search",
        "hydra.sweeper.n_trials=2",
        *TINY,
        "trainer.iterations=2",
        f"hydra.sweep.dir={tmp_path}",
        env=cli_env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = find_runs([tmp_path])
    assert len(runs) == 2 and all("algo.inner_lr" in run.overrides for run in runs)
    best = OmegaConf.load(tmp_path / "optimization_results.yaml")
    validation = [
        json.loads((r.folder / "results.json").read_text())["training"]["best_val_accuracy"]
        for r in runs
    ]
    assert best["best_value"] == pytest.approx(max(validation))


def test_slurm_launcher_config_composes(cli_env):
    done = metarun("train", "hydra/launcher=slurm", "--cfg", "hydra", env=cli_env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SlurmLauncher" in done.stdout and "gpus_per_node: 1" in done.stdout


def test_report_shows_the_commit_when_runs_differ_in_it(tmp_path):
    for name, commit in (("a", "1234567890abcdef"), ("b", "fedcba0987654321")):
        folder = fake_run(tmp_path / name, [f"seed={name}"], 0.9)
        results = json.loads((folder / "results.json").read_text())
        results["code"] = {"commit": commit, "uncommitted_changes": name == "b"}
        (folder / "results.json").write_text(json.dumps(results))
    table = markdown(find_runs([tmp_path]))
    assert "| commit |" in table and "| 1234567890 |" in table and "| fedcba0987+ |" in table


def test_report_leaves_the_commit_out_when_runs_share_it(sweep):
    assert "commit" not in markdown(find_runs([sweep]))


def test_runs_scored_differently_get_a_picture_each_and_no_sweep_plot(tmp_path, cli_env):
    fake_run(
        tmp_path / "classifier",
        ["experiment=protonet_omniglot_5w1s", "dataset.rotations=[0]"],
        0.97,
    )
    regression = fake_run(tmp_path / "regressor", ["experiment=maml_sinusoid"], None)
    rows = [{"iteration": 10, "train_loss": 1.0, "val_mse": 0.5, "val_mse_ci95": 0.1}]
    (regression / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = metarun("plot", str(tmp_path), "--output", str(tmp_path / "plots"), env=cli_env)
    assert done.returncode == 0, done.stderr
    written = sorted(path.name for path in (tmp_path / "plots").iterdir())
    assert written == ["learning_curves_accuracy.png", "learning_curves_mse.png"]


def test_runs_named_by_relative_and_absolute_paths_share_one_table(tmp_path, monkeypatch):
    fake_run(tmp_path / "a", ["seed=0"], 0.9)
    fake_run(tmp_path / "b", ["seed=1"], 0.8)
    monkeypatch.chdir(tmp_path)
    table = markdown(find_runs([Path("a"), tmp_path / "b"]))
    assert "| a |" in table and "| b |" in table


def test_report_shows_the_accuracy_by_instance_of_online_runs(tmp_path):
    fake_run(tmp_path / "a", ["algo=mann"], 0.9)
    online = fake_run(tmp_path / "b", ["algo=lstm_baseline"], 0.5)
    results = json.loads((online / "results.json").read_text())
    results["accuracy_by_instance"] = [{"mean": m, "ci95": 0.01} for m in (0.25, 0.5, 0.625)]
    (online / "results.json").write_text(json.dumps(results))
    table = markdown(find_runs([tmp_path]))
    assert "| instance 1 | instance 2 | instance 3 |" in table
    assert "| lstm_baseline | 50.00 | 1.00 | 25.00 | 50.00 | 62.50 | 600 |" in table
    assert "| mann | 90.00 | 1.00 |  |  |  | 600 |" in table
