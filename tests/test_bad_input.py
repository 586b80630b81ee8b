"""Every user mistake ends in one clear paragraph naming the setting, a non-zero exit, no
traceback."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import metarun

QUICK = ["trainer.iterations=1", "trainer.val_episodes=2", "eval.episodes=2", "device=cpu"]

TRAIN_MISTAKES = [
    (["algo=nope"], "Available options in 'algo'"),
    (["dataset=nope"], "Available options in 'dataset'"),
    (["backbone=nope"], "Available options in 'backbone'"),
    (["optimizer=nope"], "Available options in 'optimizer'"),
    (["experiment=nope"], "Available options in 'experiment'"),
    (
        ["task.wayz=3"],
        "task.wayz is not a setting. Settings under task: attack, attack_step_size, "
        "attack_steps, batch_size, epsilon, meta_batch_size, min_queries, min_shots",
    ),
    (["wayz=3"], "wayz is not a setting. Settings at the top level: algo, backbone"),
    (["+algo.foo=1"], "'algo' config could not be built"),
    (["task.ways=abc"], "task.ways='abc' is not a whole number"),
    (["task.ways=2000"], "task.ways=2000 but the 'test' split has only 1692"),
    (["task.ways=1000"], "task.ways=1000 but the 'val' split has only 688"),
    (["task.shots=12", "task.queries=10"], "task.shots + eval.queries = 12 + 15"),
    (["task.shots=6", "task.queries=15", "eval.queries=5"], "task.shots + task.queries = 6 + 15"),
    (["task.shots=0"], "task.shots=0 is not allowed"),
    (["task.queries=-1"], "task.queries=-1 is not allowed"),
    (["task.meta_batch_size=0"], "task.meta_batch_size=0"),
    (["trainer.iterations=1.5"], "trainer.iterations=1.5 is not a whole number"),
    (["optimizer.lr=-0.1"], "optimizer.lr=-0.1"),
    (["algo.inner_lr=0"], "algo.inner_lr=0"),
    (["algo.inner_steps=-1"], "algo.inner_steps=-1"),
    (["eval.episodes=0"], "eval.episodes=0"),
    (["dataset.root=/nonexistent/data", "dataset.download=false"], "dataset.root"),
    (["dataset.split=nope"], "dataset.split='nope'"),
    (["dataset=sinusoid"], "backbone=mlp"),
    (["dataset=sinusoid", "backbone=mlp", "algo=protonet"], "ProtoNet classifies"),
    (["task.train_ways=10"], "task.train_ways"),
    (
        ["dataset=sinusoid", "backbone=mlp", "algo=baseline"],
        "trains as a classifier on labelled batches",
    ),
    (["device=cuda:0"] if not torch.cuda.is_available() else ["device=tpu"], "device="),
    (["engine=fast"], "engine='fast'"),
    (["compile=sometimes"], "compile='sometimes'"),
    (["bn=sometimes"], "bn='sometimes'"),
    (["bn=running", "engine=vmap"], "bn=running updates BatchNorm's running statistics"),
    (["algo=reptile", "engine=vmap"], "algo.inner_state=carried starts each task"),
    (["algo=reptile", "processes=2"], "one process. Use processes=1"),
    (["algo=imaml", "algo.inner_solver=newton"], "algo.inner_solver='newton' must be gd"),
    (["trainer.nonfinite=ignore"], "trainer.nonfinite='ignore'"),
    (["eval.attack=fgsm", "eval.epsilon=-0.1"], "eval.epsilon=-0.1 is not allowed"),
    (
        ["eval.attack=pgd", "eval.attack_steps=0"],
        "eval.attack_steps=0 is not allowed with eval.attack=pgd",
    ),
    (["eval.attack=pgd", "eval.attack_step_size=0"], "eval.attack_step_size=0 is not allowed"),
    (["eval.attack=cw"], "eval.attack='cw' is not one of none, fgsm, pgd"),
    (["eval.attack=fgsm", "eval.attack_target=labels"], "eval.attack_target='labels'"),
    (
        ["eval.attack=fgsm", "dataset=sinusoid", "backbone=mlp"],
        "eval.attack perturbs a classifier's images",
    ),
    (
        ["task.attack=fgsm", "dataset=sinusoid", "backbone=mlp"],
        "task.attack perturbs a classifier's images",
    ),
    (["algo=adml"], "algo=ADML meta-trains on adversarial examples, and task.attack=none"),
    (
        ["algo=snail", "task.protocol=online", "eval.attack=fgsm"],
        "eval.attack=fgsm attacks episodes, but eval.protocol=online",
    ),
    (["algo=reptile", "task.attack=fgsm"], "algo=Reptile meta-trains with a loss of its own"),
    (["trainer.clip_grad_norm=0"], "trainer.clip_grad_norm=0"),
    (["init_from=/nonexistent/run"], "No checkpoint at /nonexistent/run"),
    (["dataset=image_folder"], "dataset.root has no value"),
    (["dataset=mini_imagenet", "dataset.root=/nonexistent/mini"], "cannot download it"),
    (["dataset=cub", "dataset.root=/nonexistent/cub", "dataset.download=false"], "CUB-200-2011"),
    (["backbone=resnet12", "dataset.image_size=12"], "too small for ResNet-12"),
    (["backbone.downsample=avgpool"], "backbone.downsample='avgpool' is not one of"),
    (
        ["trainer.resume=/nonexistent/run"],
        "trainer.resume=/nonexistent/run has no valid checkpoint",
    ),
]


def assert_clear_failure(done, expected: str) -> None:
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-2000:]
    assert "Traceback" not in output, output[-2000:]
    assert expected in output, output[-2000:]


@pytest.mark.parametrize(
    "overrides, expected",
    TRAIN_MISTAKES,
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_train_mistake(overrides, expected, metarun_in_process, tmp_path):
    done = metarun_in_process("train", *QUICK, *overrides, f"hydra.run.dir={tmp_path}")
    assert_clear_failure(done, expected)


WIRED_THROUGH_THE_COMMAND = [TRAIN_MISTAKES[0], TRAIN_MISTAKES[9]]  # a Hydra error and one of ours


@pytest.mark.parametrize(
    "overrides, expected",
    WIRED_THROUGH_THE_COMMAND,
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_train_mistake_through_the_real_command(overrides, expected, cli_env, tmp_path):
    done = metarun("train", *QUICK, *overrides, f"hydra.run.dir={tmp_path}", env=cli_env)
    assert_clear_failure(done, expected)


@pytest.fixture
def broken_runs(trained_run, tmp_path):
    """Run folders made wrong in the ways a user meets: empty, truncated, other shape, foreign
    file."""
    no_checkpoint = tmp_path / "no_checkpoint"
    no_checkpoint.mkdir()
    shutil.copy(trained_run / "config.yaml", no_checkpoint / "config.yaml")

    truncated = tmp_path / "truncated"
    shutil.copytree(trained_run, truncated)
    best = truncated / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[:1000])

    other_shape = tmp_path / "other_shape"
    shutil.copytree(trained_run, other_shape)
    config = other_shape / "config.yaml"
    config.write_text(config.read_text().replace("hidden: 8", "hidden: 16"))

    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    return {
        "no_checkpoint": no_checkpoint,
        "truncated": truncated,
        "other_shape": other_shape,
        "foreign": foreign,
        "good": trained_run,
    }


EVAL_MISTAKES = [
    ([], "needs run_dir="),
    (["run_dir={tmp}"], "is not a metarun run folder"),
    (["run_dir={no_checkpoint}"], "no checkpoints/best.pt"),
    (["run_dir={truncated}"], "cannot be read"),
    (["run_dir={other_shape}"], "different shape"),
    (["run_dir={good}", "checkpoint={foreign}"], "not a metarun checkpoint"),
    (
        ["run_dir={good}", "checkpoint=/nonexistent/model.pt"],
        "No checkpoint at /nonexistent/model.pt",
    ),
    (["run_dir={good}", "eval.episodes=0"], "eval.episodes=0"),
    (["run_dir={good}", "eval.shots=30"], "eval.shots + eval.queries = 30 + 2"),
    (["run_dir={good}", "bn=running"], "was trained with bn=transductive"),
    (["run_dir={good}", "eval.ways=3"], "Keep task.train_ways and eval.ways equal to task.ways"),
    (["run_dir={good}", "algo.inner_steps=3"], "algo.inner_steps is not a setting of metarun eval"),
]


@pytest.mark.parametrize(
    "arguments, expected", EVAL_MISTAKES, ids=lambda v: " ".join(v) if isinstance(v, list) else None
)
def test_eval_mistake(arguments, expected, broken_runs, metarun_in_process, tmp_path):
    paths = {**broken_runs, "tmp": tmp_path}
    done = metarun_in_process("eval", *(a.format(**paths) for a in arguments))
    assert_clear_failure(done, expected)


@pytest.mark.parametrize("arguments, expected", [EVAL_MISTAKES[0], EVAL_MISTAKES[8]])
def test_eval_mistake_through_the_real_command(arguments, expected, broken_runs, cli_env, tmp_path):
    paths = {**broken_runs, "tmp": tmp_path}
    done = metarun("eval", *(a.format(**paths) for a in arguments), env=cli_env)
    assert_clear_failure(done, expected)


def test_unreadable_image_in_a_dataset_folder_is_named(metarun_in_process, tmp_path):
    character = tmp_path / "data" / "omniglot" / "images_background" / "Alphabet" / "character01"
    character.mkdir(parents=True)
    (character / "0001_01.png").write_bytes(b"this is not a png")
    done = metarun_in_process(
        "train",
        *QUICK,
        f"dataset.root={tmp_path / 'data'}",
        "dataset.download=false",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert_clear_failure(done, "Alphabet/character01/0001_01.png")


def test_partial_dataset_says_what_is_missing(metarun_in_process, tmp_path, data_root):
    folder = tmp_path / "data" / "omniglot"
    folder.mkdir(parents=True)
    (folder / "images_background.zip").symlink_to(data_root / "omniglot" / "images_background.zip")
    done = metarun_in_process(
        "train",
        *QUICK,
        f"dataset.root={tmp_path / 'data'}",
        "dataset.download=false",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert_clear_failure(done, "images_evaluation.zip")


def test_a_launcher_whose_plugin_is_missing_names_the_extra(
    metarun_in_process, monkeypatch, tmp_path
):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if "joblib" in name else real(name, *a)
    )
    done = metarun_in_process(
        "train", "-m", "hydra/launcher=parallel", f"hydra.sweep.dir={tmp_path}"
    )
    assert_clear_failure(
        done, "hydra/launcher=parallel needs the hydra_joblib_launcher Hydra plugin"
    )
    assert "metarun[sweep]" in done.stderr
