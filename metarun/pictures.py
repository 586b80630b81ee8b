"""Pictures of what a trained model does on a few test tasks, drawn from a run's best
checkpoint: 1-D regression curves with their predicted band, image completions, and
navigation paths before and after adaptation. `metarun plot` draws them beside the curves of
metarun.plot, for the runs they apply to.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

from metarun.algorithms.policy_gradient import CollectingAlgorithm
from metarun.api import load
from metarun.data.completion import pixel_coordinates
from metarun.metrics import NORMAL_97_5
from metarun.plot import plt, save
from metarun.report import RunResult


def regression_curves(runs: list[RunResult], output: Path, tasks: int = 4) -> list[Path]:
    """Per finished regression run on scalar inputs (sinusoid, gp_1d): a few test tasks' context
    points, targets, predicted mean and, where the model predicts a spread, its central 95%
    band, by the best checkpoint."""
    drawn = []
    for run in runs:
        checkpoint = run.folder / "checkpoints" / "best.pt"
        if run.metric != "mse" or not checkpoint.is_file():
            continue
        model = load(run.folder)
        if tuple(model.dataset.input_shape) != (1,):
            continue
        ev = model.config.eval
        sampler = model.dataset.sampler("test", 1, ev.shots, ev.queries, "cpu")
        batch = sampler.sample(tasks, torch.Generator().manual_seed(ev.seed))
        figure, axes = plt.subplots(1, tasks, figsize=(3.2 * tasks, 3.0), sharey=True)
        for task, ax in enumerate(axes):
            order = batch.query_x[task, :, 0].argsort()
            x, y = batch.query_x[task, order, 0].numpy(), batch.query_y[task, order, 0].numpy()
            learner = model.adapt(batch.support_x[task], batch.support_y[task])
            with torch.no_grad():
                prediction = learner.predict(torch.from_numpy(x).unsqueeze(-1))
                mean, std = (v.numpy() for v in model.algo.gaussian(prediction).unbind(-1))
            ax.plot(x, y, ":", color="black", label="targets")
            ax.plot(x, mean, color="C0", label="predicted mean")
            if (std > 0).any():
                low, high = mean - NORMAL_97_5 * std, mean + NORMAL_97_5 * std
                ax.fill_between(x, low, high, color="C0", alpha=0.2, label="95% band")
            ax.plot(
                batch.support_x[task, :, 0].numpy(),
                batch.support_y[task, :, 0].numpy(),
                "o",
                color="C3",
                label="contexts",
            )
            ax.set_xlabel("x")
        axes[0].legend(fontsize="small", loc="best")
        figure.suptitle(f"{run.folder.name}: {ev.shots} contexts, best checkpoint")
        drawn.append(save(figure, output / f"curves_{run.folder.name}.png"))
    return drawn


def completion_pictures(runs: list[RunResult], output: Path, images: int = 4) -> list[Path]:
    """Per finished image-completion run: a few test images' context pixels, the predicted mean
    and standard deviation of every pixel, and the image itself, by the best checkpoint."""
    drawn = []
    for run in runs:
        checkpoint = run.folder / "checkpoints" / "best.pt"
        if not checkpoint.is_file():
            continue
        model = load(run.folder)
        if not hasattr(model.dataset, "image_shape"):
            continue
        ev, (_, height, width) = model.config.eval, model.dataset.image_shape
        sampler = model.dataset.sampler("test", 1, ev.shots, 1, "cpu")
        plan = sampler.draw(images, torch.Generator().manual_seed(ev.seed))
        batch = sampler.build(plan)
        grid = pixel_coordinates(height, width)
        # pixels not among the contexts drawn blue, as in the CNP paper's figures
        gray = plt.get_cmap("gray").with_extremes(bad="tab:blue")
        figure, axes = plt.subplots(images, 4, figsize=(7, 1.9 * images), squeeze=False)
        for row in range(images):
            truth = sampler.images[plan[row, 0]].float().div(255).view(height, width)
            context = torch.full((height * width,), float("nan"))
            shown = plan[row, 1 : 1 + ev.shots]
            context[shown] = truth.flatten()[shown]
            learner = model.adapt(batch.support_x[row], batch.support_y[row])
            with torch.no_grad():
                mean, std = model.algo.gaussian(learner.predict(grid)).unbind(-1)
            pictures = (
                context.view(height, width),
                mean.view(height, width),
                std.view(height, width),
                truth,
            )
            for ax, picture, title in zip(axes[row], pictures, ("context", "mean", "std", "image")):
                ax.imshow(picture.numpy(), cmap=gray, vmin=0, vmax=1 if title != "std" else None)
                ax.set_axis_off()
                if row == 0:
                    ax.set_title(title, fontsize="small")
        figure.suptitle(f"{run.folder.name}: {ev.shots} context pixels")
        drawn.append(save(figure, output / f"completion_{run.folder.name}.png"))
    return drawn


def path_pictures(runs: list[RunResult], output: Path, tasks: int = 4) -> list[Path]:
    """For environments that can draw their paths (2D navigation): a few held-out tasks' first
    trajectory before and after adaptation, by each finished run's best checkpoint."""
    drawn = []
    for run in runs:
        checkpoint = run.folder / "checkpoints" / "best.pt"
        config_path = run.folder / "config.yaml"
        if not (checkpoint.is_file() and config_path.is_file()):
            continue
        config = OmegaConf.load(config_path)
        if not hasattr(get_class(config.dataset._target_), "draw_paths"):
            continue
        model = load(run.folder)
        algo = cast(CollectingAlgorithm, model.algo)
        family, steps = model.dataset, config.eval.inner_steps
        sampler = family.sampler("test", 1, config.eval.shots, config.eval.shots, "cpu")
        batch = sampler.sample(tasks, torch.Generator().manual_seed(config.eval.seed))
        with torch.no_grad():
            weights, supports = algo.adapt_policies(algo.params(), batch, steps)
            if not supports:
                supports = [algo.collect(batch, weights, batch.shots, round=0)]
            after = algo.collect(batch, weights, batch.shots, round=steps).trajectories
        figure, axes = plt.subplots(1, tasks, figsize=(3.2 * tasks, 3.4))
        for task, ax in enumerate(axes):
            family.draw_paths(ax, batch.tasks[task], supports[0].trajectories, after, task)
        axes[0].legend(fontsize="small", loc="best")
        figure.suptitle(f"{run.folder.name}: before and after {steps} adaptation steps")
        drawn.append(save(figure, output / f"paths_{run.folder.name}.png"))
    return drawn
