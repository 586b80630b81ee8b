"""Killed, preempted and damaged runs: real processes, real signals, real files."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy
import pytest
import torch
from conftest import METARUN, REPO, TINY, metarun

from metarun import checkpoint, run
from metarun.checkpoint import restore_rng
from metarun.errors import TrainingError
from metarun.runtime import STOP_NOTICE, stoppable

LONG = [
    *TINY,
    "trainer.iterations=40",
    "trainer.ckpt_every=5",
    "trainer.log_every=1",
    "trainer.val_every=10",
]


def start(run_dir: Path, env: dict, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [METARUN, "train", *LONG, f"hydra.run.dir={run_dir}", *extra],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def saved_iteration(run_dir: Path) -> int:
    try:
        return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["iteration"]
    except Exception:
        return 0


def final_state(run_dir: Path) -> tuple[dict, list[dict]]:
    model = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    timing = ("tasks_per_s", "elapsed_s")
    return model, [{k: v for k, v in row.items() if k not in timing} for row in rows]


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(cli_env, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert metarun("train", *LONG, f"hydra.run.dir={straight}", env=cli_env).returncode == 0

    process = start(killed, cli_env)
    wait_for(lambda: saved_iteration(killed) >= 10, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert saved_iteration(killed) < 40, "killed before the end"
    done = metarun("train", *LONG, f"hydra.run.dir={killed}", "trainer.resume=auto", env=cli_env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming from" in done.stderr

    (model_a, rows_a), (model_b, rows_b) = final_state(straight), final_state(killed)
    assert rows_a == rows_b
    for name in model_a:
        assert torch.equal(model_a[name], model_b[name]), name
    assert (
        json.loads((straight / "results.json").read_text())["accuracy"]
        == json.loads((killed / "results.json").read_text())["accuracy"]
    )


@pytest.mark.slow
def test_sigterm_checkpoints_the_finished_iteration_and_resume_continues(cli_env, tmp_path):
    process = start(tmp_path, cli_env)
    metrics = tmp_path / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 75, stderr[-2000:]
    stopped_at = saved_iteration(tmp_path)
    last_logged = json.loads(metrics.read_text().splitlines()[-1])["iteration"]
    assert stopped_at == last_logged and 3 <= stopped_at < 40
    assert "trainer.resume=auto" in stderr

    done = metarun("train", *LONG, f"hydra.run.dir={tmp_path}", "trainer.resume=auto", env=cli_env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"at iteration {stopped_at}" in done.stderr
    assert saved_iteration(tmp_path) == 40


@pytest.mark.slow
def test_a_second_signal_exits_at_once(cli_env, tmp_path):
    # Iteration 3 ends in a validation of many seconds, which a first signal does not cut short;
    # so both signals, sent while iteration 3 runs, reach a busy process whatever the machine's
    # speed.
    long_validation = ["trainer.val_every=3", "trainer.val_episodes=4000"]
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [METARUN, "train", *LONG, f"hydra.run.dir={tmp_path / 'run'}", *long_validation],
            cwd=REPO,
            env=cli_env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        metrics = tmp_path / "run" / "metrics.jsonl"
        wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2, process)
        process.send_signal(signal.SIGINT)
        wait_for(lambda: STOP_NOTICE.strip() in log.read_text(), process)  # the first one landed
        process.send_signal(signal.SIGINT)
        process.wait(timeout=120)
    assert process.returncode == -signal.SIGINT


@pytest.mark.parametrize("announce", [True, False], ids=["rank_0", "other_rank"])
def test_a_stop_is_announced_by_rank_0_alone(announce, capfd):
    with stoppable(announce=announce) as stop:
        signal.raise_signal(signal.SIGTERM)
    assert stop.requested
    assert (STOP_NOTICE.strip() in capfd.readouterr().err) == announce


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(make_cfg, tmp_path, capsys):
    run.train(make_cfg(*TINY, "trainer.iterations=4", "trainer.ckpt_every=1"), tmp_path)
    last = tmp_path / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    capsys.readouterr()
    run.train(
        make_cfg(*TINY, "trainer.iterations=6", "trainer.ckpt_every=1", "trainer.resume=auto"),
        tmp_path,
    )
    err = capsys.readouterr().err
    assert "cannot be read" in err and "Falling back" in err
    assert "previous.pt at iteration 3" in err
    assert saved_iteration(tmp_path) == 6


def test_disk_full_during_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.atomic_save({"format": 1, "model": {}, "iteration": 1}, path)

    def full_disk(obj, stream):
        stream.write(b"partial bytes")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(TrainingError, match="No space left on device.*intact"):
        checkpoint.atomic_save(
            {"format": 1, "model": {}, "iteration": 2}, path, previous=tmp_path / "previous.pt"
        )
    monkeypatch.undo()
    assert checkpoint.load_checkpoint(path)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"], "no temporary file left behind"


NONFINITE = [
    "experiment=maml_sinusoid",
    "algo.inner_lr=1e30",
    "trainer.iterations=3",
    "trainer.log_every=1",
    "trainer.val_every=3",
    "trainer.val_episodes=4",
    "eval.episodes=4",
    "trainer.ckpt_every=1",
]


def test_nonfinite_loss_stops_naming_the_iteration(metarun_in_process, tmp_path):
    done = metarun_in_process("train", *NONFINITE, f"hydra.run.dir={tmp_path}")
    assert done.returncode == 3 and "Traceback" not in done.stderr
    assert "not finite at iteration 1" in done.stderr and "trainer.nonfinite=skip" in done.stderr


def test_nonfinite_meta_batches_can_be_skipped_and_counted(make_cfg, tmp_path):
    run.train(make_cfg(*NONFINITE, "trainer.nonfinite=skip"), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["skipped_nonfinite"] == 3


@pytest.mark.slow
def test_rerunning_a_sweep_skips_finished_jobs_and_resumes_unfinished(cli_env, tmp_path):
    sweep = [
        "train",
        "-m",
        *TINY,
        "trainer.ckpt_every=1",
        "algo=maml,fomaml",
        f"hydra.sweep.dir={tmp_path}",
    ]
    assert metarun(*sweep, env=cli_env).returncode == 0
    finished, unfinished = sorted(tmp_path.glob("*/results.json"))
    finished_before = finished.read_text()
    unfinished.unlink()  # as if that job had been killed after its last checkpoint

    again = metarun(*sweep, env=cli_env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{finished.parent} already finished; skipping" in again.stderr
    assert f"resuming from {unfinished.parent / 'checkpoints'}" in again.stderr
    assert finished.read_text() == finished_before and unfinished.is_file()


def test_checkpoint_restores_every_random_generator(make_cfg, tmp_path):
    run.train(make_cfg(*TINY, "trainer.iterations=2"), tmp_path)
    state = checkpoint.load_checkpoint(tmp_path / "checkpoints" / "last.pt")  # through a file
    sampler = torch.Generator()
    restore_rng(state["rng"], sampler)
    expected = (
        random.random(),
        numpy.random.rand(),
        torch.rand(1).item(),
        torch.rand(1, generator=sampler).item(),
    )
    random.seed(99), numpy.random.seed(99), torch.manual_seed(99), sampler.manual_seed(99)
    restore_rng(state["rng"], sampler)
    assert (
        random.random(),
        numpy.random.rand(),
        torch.rand(1).item(),
        torch.rand(1, generator=sampler).item(),
    ) == expected


def test_resume_restores_batchnorm_running_statistics(make_cfg, tmp_path):
    settings = [*TINY, "algo=protonet", "bn=running", "trainer.val_every=100"]
    run.train(make_cfg(*settings, "trainer.iterations=4"), tmp_path / "straight")
    run.train(make_cfg(*settings, "trainer.iterations=2"), tmp_path / "resumed")
    run.train(
        make_cfg(*settings, "trainer.iterations=4", "trainer.resume=auto"), tmp_path / "resumed"
    )
    straight, resumed = (
        checkpoint.load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")["model"]
        for name in ("straight", "resumed")
    )
    assert any("running_mean" in name for name in straight)
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
