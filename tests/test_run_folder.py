"""What a run tells and records: the banner before training, the code that made its results,
and how `metarun eval` inherits the run's settings. All on the in-memory TinyImages dataset."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CONFIGS
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import metarun
from metarun import retest, run
from metarun.provenance import code_stamp


def eval_cfg(run_dir, *overrides: str):
    """The `metarun eval` config as the command composes it, and the overrides it was given."""
    given = [f"run_dir={run_dir}", *overrides]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("eval", given), given


def test_banner_says_what_runs_and_where_before_the_first_iteration(tiny_cfg, tmp_path, capsys):
    run.train(tiny_cfg("algo=protonet"), tmp_path)
    err = capsys.readouterr().err
    banner, progress = err.index("metarun train: ProtoNet on tiny_images"), err.index("meta-train")
    assert banner < progress
    for said in (
        "5-way 1-shot, 2 queries per class",
        "4 iterations",
        "device cpu",
        "engine loop",
        f"run folder {tmp_path}",
        "metrics.jsonl",
    ):
        assert said in err[banner:progress], said


def test_results_record_the_code_that_made_them(tiny_cfg, tmp_path):
    results = run.train(tiny_cfg("algo=protonet"), tmp_path)
    stamp = code_stamp(torch.device("cpu"))
    assert (
        results["code"] == stamp
        and stamp["torch"] == torch.__version__
        and stamp["device"] == "cpu"
    )
    assert json.loads((tmp_path / "results.json").read_text())["code"] == stamp
    assert (
        stamp["metarun"]
        and len(stamp["commit"]) == 40
        and stamp["uncommitted_changes"] in (True, False)
    )


def test_each_start_and_resume_appends_to_code_json(tiny_cfg, tmp_path):
    run.train(tiny_cfg("algo=protonet", "trainer.iterations=2"), tmp_path)
    run.train(tiny_cfg("algo=protonet", "trainer.resume=auto"), tmp_path)
    entries = json.loads((tmp_path / "code.json").read_text())
    assert [entry["started_at_iteration"] for entry in entries] == [0, 2]
    assert entries[0]["computation"] == entries[1]["computation"]
    assert {"processes", "threads", "engine", "compile"} <= set(entries[0]["computation"])


def test_a_run_resumed_with_other_threads_warns_that_it_is_not_bit_identical(
    tiny_cfg, tmp_path, capsys
):
    run.train(tiny_cfg("algo=protonet", "trainer.iterations=2", "threads=1"), tmp_path)
    run.train(
        tiny_cfg("algo=protonet", "trainer.iterations=3", "trainer.resume=auto", "threads=1"),
        tmp_path,
    )
    assert "bit-identical" not in capsys.readouterr().err
    run.train(
        tiny_cfg("algo=protonet", "trainer.iterations=4", "trainer.resume=auto", "threads=2"),
        tmp_path,
    )
    err = capsys.readouterr().err
    assert "computed with threads=1 and resumes with threads=2" in err
    assert "will not be bit-identical" in err and "add threads=1 to the resume command" in err


def test_eval_keeps_the_runs_engine_unless_the_command_line_sets_it(tiny_cfg, tmp_path):
    run.train(tiny_cfg("algo=protonet", "engine=vmap", "compile=false"), tmp_path)
    kept = retest.evaluate(*eval_cfg(tmp_path))
    assert kept["protocol"]["engine"] == "vmap"
    given = retest.evaluate(*eval_cfg(tmp_path, "engine=loop"))
    assert given["protocol"]["engine"] == "loop"
    assert given["accuracy"]["mean"] == kept["accuracy"]["mean"]
    assert json.loads((tmp_path / "eval.json").read_text())["code"]["device"] == "cpu"


def test_a_run_folder_saved_before_later_settings_existed_is_upgraded(tiny_cfg, tmp_path):
    run.train(tiny_cfg("algo=protonet"), tmp_path)
    config = OmegaConf.load(tmp_path / "config.yaml")
    for key in ("bn", "precision", "compile", "channels_last", "keep_freed_memory"):
        config.pop(key)
    config.eval.pop("ways")
    OmegaConf.save(config, tmp_path / "config.yaml")
    protocol = retest.evaluate(*eval_cfg(tmp_path))["protocol"]
    assert protocol["keep_freed_memory"] is False and protocol["precision"] == "fp32"
    assert protocol["batchnorm"].startswith("transductive") and protocol["ways"] == 5


def test_show_prints_a_presets_resolved_settings(metarun_in_process):
    done = metarun_in_process("show", "experiment=anil_omniglot_20w5s")
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(maxsplit=1) for line in done.stdout.splitlines())
    assert (
        lines["algorithm"] == "ANIL"
        and lines["train_episode"] == "20-way 5-shot, 5 queries per class"
    )
    assert (
        lines["inner_lr"] == "0.1"
        and lines["inner_steps_test"] == "5"
        and lines["iterations"] == "60000"
    )


def test_load_reads_a_checkpoint_saved_before_later_settings_existed(tiny_cfg, tmp_path):
    run.train(tiny_cfg("algo=protonet"), tmp_path)
    best = tmp_path / "checkpoints" / "best.pt"
    state = torch.load(best, weights_only=True)
    for key in ("bn", "precision", "compile", "channels_last", "keep_freed_memory"):
        state["config"].pop(key)
    torch.save(state, best)
    model = metarun.load(tmp_path)
    assert model.algo.bn == "transductive" and model.config.keep_freed_memory is False


@pytest.mark.parametrize(
    "group, target, key, old",
    [
        ("algo", "metarun.algorithms.snail.SNAIL", "first_dilation", 1),
        ("algo", "metarun.algorithms.meta_net.MetaNet", "join_before_pooling", False),
        ("algo", "metarun.algorithms.maml_rl.MAMLRL", "policy_init", "torch"),
        ("dataset", "metarun.data.half_cheetah.HalfCheetah", "simulator", "gymnasium"),
    ],
)
def test_an_old_run_keeps_the_model_its_class_built_then(group, target, key, old):
    from metarun.old_runs import upgrade_old_config

    saved = OmegaConf.create({group: {"_target_": target}, "other": {"_target_": "x.Y"}})
    upgraded = upgrade_old_config(saved)
    assert upgraded[group][key] == old and key not in upgraded.other
    kept = upgrade_old_config(OmegaConf.create({group: {"_target_": target, key: "new"}}))
    assert kept[group][key] == "new"
