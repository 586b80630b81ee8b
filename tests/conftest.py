"""Shared fixtures: the real Omniglot copy and tiny composed configs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from metarun.launch import cores, memory

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
DATA_ROOT = Path(os.environ.get("METARUN_DATA", REPO.parent / "shared" / "datasets")).resolve()

TINY = ["debug=tiny", "backbone.hidden=8"]  # configs/debug/tiny.yaml and a narrow Conv-4


def pytest_configure(config) -> None:
    """Under pytest-xdist (`-n auto`) each worker computes on one thread: a worker per core with
    every core as threads oversubscribes the machine. On 2 cores the not-slow tests took 3 min
    57 s with 2 workers of 2 threads, 2 min 52 s with 2 workers of 1 thread and 4 min 19 s in
    one process."""
    if "PYTEST_XDIST_WORKER" in os.environ:
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: a worker per core, but at most one per 4 GiB of the memory it may use (the
    machine's or its cgroup limit), so a many-core machine with little memory does not swap:
    with two workers the suite's Python processes (workers and the training processes some
    tests start) peaked at 6.7 GB together, 2.0 GB the largest."""
    return max(1, min(cores(), memory() // 2**32))


def pytest_collection_modifyitems(items) -> None:
    """Tests that read the real Omniglot (through the data_root fixture) are marked `omniglot`."""
    for item in items:
        if "data_root" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.omniglot)


@pytest.fixture
def tiny_cfg():
    """compose('train', overrides) with the in-memory TinyImages dataset (tests/synthetic.py)
    in place of Omniglot: no data folder needed."""

    def make(*overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose(config_name="train", overrides=[*TINY, *overrides])
        with open_dict(cfg):
            cfg.dataset = {"_target_": "synthetic.TinyImages"}
        return cfg

    return make


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (DATA_ROOT / "omniglot").is_dir():
        pytest.fail(
            f"Omniglot not found under {DATA_ROOT}; set METARUN_DATA to the folder holding "
            f"omniglot/."
        )
    return DATA_ROOT


@pytest.fixture
def make_cfg(data_root):
    """compose('train', overrides) with the data root set; no Hydra run is started."""

    def make(*overrides: str, config: str = "train") -> DictConfig:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            extra = (
                [f"dataset.root={data_root}"]
                if config == "train"
                and not any(o.startswith("dataset=sinusoid") or "sinusoid" in o for o in overrides)
                else []
            )
            return compose(config_name=config, overrides=[*extra, *overrides])

    return make


def command_env(data_root: Path) -> dict:
    """Environment for running the real `metarun` command in a subprocess."""
    return {**os.environ, "METARUN_DATA": str(data_root), "OMP_NUM_THREADS": "1"}


@pytest.fixture
def cli_env(data_root) -> dict:
    return command_env(data_root)


METARUN = shutil.which("metarun", path=str(Path(sys.executable).parent)) or "metarun"


def metarun(*args: str, env: dict) -> subprocess.CompletedProcess:
    """Runs the installed `metarun` command from the repository root."""
    return subprocess.run(
        [METARUN, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=300
    )


@pytest.fixture
def metarun_in_process(data_root, capsys, monkeypatch):
    """Calls the entry function the `metarun` command calls, in this process (no interpreter
    start-up): returns the exit status and output as a CompletedProcess."""
    from metarun import cli

    def call(*args: str) -> subprocess.CompletedProcess:
        monkeypatch.setenv("METARUN_DATA", str(data_root))
        monkeypatch.setattr(sys, "argv", ["metarun", *args])
        capsys.readouterr()
        try:
            cli.main()
            status = 0
        except SystemExit as end:
            status = end.code if isinstance(end.code, int) else 1
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["metarun", *args], status, out, err)

    return call


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, data_root) -> Path:
    """A tiny Omniglot run folder made by the real command, shared by the CLI tests."""
    run_dir = tmp_path_factory.mktemp("run")
    done = metarun("train", *TINY, f"hydra.run.dir={run_dir}", env=command_env(data_root))
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir
