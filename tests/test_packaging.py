"""metarun installs as a package (the wheel carries the configs), and users extend it from a
config folder of their own without forking."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

TINY_SINUSOID = [
    "experiment=maml_sinusoid",
    "trainer.iterations=2",
    "trainer.log_every=1",
    "trainer.val_every=2",
    "trainer.val_episodes=4",
    "trainer.ckpt_every=2",
    "eval.episodes=4",
    "device=cpu",
]

USER_ALGORITHM = '''
from metarun.algorithms.maml import MAML


class TaggedMAML(MAML):
    """MAML with a setting of its own, read from the user's YAML."""

    def __init__(self, *args, tag: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.tag = tag
'''


def _python(*args: str, cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_the_built_wheel_runs_from_outside_the_checkout(tmp_path):
    """`pip install .` users get a package with its configs: built, installed into a folder of
    its own and run from a folder that is not the checkout."""
    wheels, site, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPO)],
        check=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("metarun-*.whl")
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, timeout=300
    )
    where = _python("-c", "import metarun; print(metarun.__file__)", cwd=elsewhere, pythonpath=site)
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout + where.stderr
    done = _python(
        "-m",
        "metarun",
        "train",
        *TINY_SINUSOID,
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=elsewhere,
        pythonpath=site,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mse" in json.loads((tmp_path / "run" / "results.json").read_text())


def test_a_users_config_folder_adds_an_algorithm(tmp_path, metarun_in_process, monkeypatch):
    """Hydra's search path finds the user's YAML; its _target_ names the user's class."""
    (tmp_path / "my_algorithms.py").write_text(USER_ALGORITHM)
    (tmp_path / "myconfigs" / "algo").mkdir(parents=True)
    (tmp_path / "myconfigs" / "algo" / "tagged_maml.yaml").write_text(
        "_target_: my_algorithms.TaggedMAML\ntag: mine\ninner_lr: 0.4\ninner_steps: 1\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    run_dir = tmp_path / "run"
    done = metarun_in_process(
        "train",
        *TINY_SINUSOID,
        f"hydra.searchpath=[file://{tmp_path / 'myconfigs'}]",
        "algo=tagged_maml",
        f"hydra.run.dir={run_dir}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["algo"]["_target_"] == "my_algorithms.TaggedMAML"
    assert config["algo"]["tag"] == "mine" and config["algo"]["inner_lr"] == 0.01  # the preset's
    assert "TaggedMAML" in done.stdout + done.stderr  # the banner names the user's class
    assert (run_dir / "results.json").is_file()
