"""The online protocol (Santoro et al. 2016) and shots drawn per meta-batch: samplers, the
label offset, instance counting, summaries and the errors of settings that cannot work."""

from __future__ import annotations

import pytest
import torch
from synthetic import TinyImages

from metarun import run
from metarun.algorithms.mann import MANN
from metarun.backbones.pixels import Pixels
from metarun.data.sampler import OnlineSequenceSampler, VariableShape
from metarun.errors import ConfigError
from metarun.evaluator import describe, summarise
from metarun.metrics import accuracy_by_instance


def online(ways=3, instances=4, tasks=6, seed=0):
    images = TinyImages(classes=10, per_class=6).split_images("train")
    sampler = OnlineSequenceSampler(images, "train", ways, instances)
    return sampler, sampler.sample(tasks, torch.Generator().manual_seed(seed)), images


def test_online_episode_is_one_shuffled_sequence_of_every_class_equally_often():
    sampler, episode, images = online()
    assert episode.support_x.shape[1] == 0 and episode.query_x.shape[:2] == (6, 12)
    for labels in episode.query_y:
        assert labels.bincount(minlength=3).tolist() == [4, 4, 4]
    assert not all(torch.equal(episode.query_y[0], row) for row in episode.query_y[1:])
    flat = images.flatten(0, 1).float() / 255
    plan = sampler.draw(6, torch.Generator().manual_seed(0))
    for task in range(6):  # each step's image belongs to the class its label stands for
        for label in range(3):
            steps = plan[task, :, 1] == label
            classes = plan[task, steps, 0] // images.shape[1]
            assert classes.unique().numel() == 1
            assert torch.equal(episode.query_x[task, steps], flat[plan[task, steps, 0]])


def test_instance_counting_on_a_hand_built_sequence():
    labels = torch.tensor([1, 0, 1, 1, 0, 0])  # instances: 1, 1, 2, 3, 2, 3
    logits = torch.zeros(6, 2)
    logits[[0, 2, 5], 1] = 1.0  # predicts 1 at steps 0, 2, 5; 0 elsewhere
    # correct: step 0 (1st of class 1), 1 (1st of 0), 2 (2nd of 1), 4 (2nd of 0)
    assert accuracy_by_instance(logits, labels, 3).tolist() == [1.0, 1.0, 0.0]


def test_online_step_sees_the_previous_label_not_its_own():
    torch.manual_seed(0)
    algo = MANN(Pixels((2,)), 3, hidden=8, memory_slots=6, memory_width=4, read_heads=2)
    seen = []
    algo.read = lambda params, features, labels: seen.append(labels) or torch.zeros(1, 4, 3)
    labels = torch.tensor([2, 0, 1, 2])
    algo.task_loss(algo.params(), torch.zeros(0, 2), labels[:0], torch.randn(4, 2), labels, 3)
    expected = torch.tensor([[0, 0, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0]], dtype=torch.float32)
    torch.testing.assert_close(seen[0][0], expected)


def test_summary_has_the_accuracy_by_instance_and_the_mean_as_headline():
    scores = torch.tensor([[0.2, 0.8, 1.0], [0.4, 0.6, 1.0]])
    summary = summarise(scores, "accuracy", "by_instance")
    assert summary["accuracy"]["mean"] == pytest.approx(0.6666667)
    assert [s["mean"] for s in summary["accuracy_by_instance"]] == pytest.approx([0.3, 0.7, 1.0])
    assert "by instance 1: 0.300, 2: 0.700, 3: 1.000" in describe(summary)


def test_variable_shape_draws_one_shot_count_per_meta_batch_from_the_range():
    images = TinyImages(classes=10, per_class=8)
    samplers = {(k, 2): images.sampler("train", 3, k, 2, torch.device("cpu")) for k in (1, 2, 3)}
    generator = torch.Generator().manual_seed(0)
    drawn = [VariableShape(samplers).sample(4, generator).support_x.shape[1] for _ in range(30)]
    assert set(drawn) == {3, 6, 9}  # ways x shots


def test_variable_shape_draws_shots_and_queries_per_meta_batch():
    images = TinyImages(classes=10, per_class=8)
    samplers = {
        (k, q): images.sampler("train", 2, k, q, torch.device("cpu"))
        for k in (1, 2)
        for q in (1, 3)
    }
    generator = torch.Generator().manual_seed(0)
    batches = [VariableShape(samplers).sample(4, generator) for _ in range(40)]
    shapes = {(b.support_x.shape[1], b.query_x.shape[1]) for b in batches}
    assert shapes == {(2, 2), (2, 6), (4, 2), (4, 6)}  # ways x shots, ways x queries


def test_min_shots_training_and_online_training_run_end_to_end(tiny_cfg, tmp_path):
    results = run.train(
        tiny_cfg("algo=protonet", "task.shots=3", "task.min_shots=1"), tmp_path / "a"
    )
    assert results["protocol"]["train_shots"] == [1, 3]
    assert results["protocol"]["train_queries"] == [2, 2]
    results = run.train(
        tiny_cfg("algo=lstm_baseline", "task.protocol=online", "task.shots=4", "algo.hidden=8"),
        tmp_path / "b",
    )
    assert len(results["accuracy_by_instance"]) == 4
    assert results["protocol"]["protocol"] == "online"


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["algo=protonet", "task.protocol=online"], "algo=ProtoNet does not read sequences"),
        (["algo=maml", "eval.protocol=online"], "eval.protocol=online shows an episode"),
        (["algo=protonet", "task.min_shots=3", "task.shots=2"], "task.min_shots=3 is above"),
        (["algo=mann", "task.protocol=online", "task.min_shots=1"], "task.min_shots draws"),
        (["algo=protonet", "task.min_queries=3", "task.queries=2"], "task.min_queries=3 is above"),
        (["algo=mann", "task.protocol=online", "task.shots=11"], "shows task.shots=11 instances"),
        (["algo=mann", "eval.ways=7"], "has a 5-way head but was given 7-way"),
        (["algo=snail", "task.protocol=sequential"], "task.protocol='sequential' is not one of"),
    ],
)
def test_settings_that_cannot_work_are_clear_errors(tiny_cfg, tmp_path, overrides, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(".", r"\.")):
        run.train(tiny_cfg(*overrides), tmp_path)
