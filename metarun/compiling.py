"""When the engine compiles a meta-gradient (compile=auto's rule and its measurements) and how:
the function torch.compile is given and the options it is given."""

from __future__ import annotations

from functools import partial

import torch
from torch.func import vmap

from metarun import batchnorm
from metarun.algorithms.base import Algorithm
from metarun.auto_rules import COMPILE_PAYS_AFTER
from metarun.backbones import has_convolutions
from metarun.errors import ConfigError

COMPILE = ("auto", True, False)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")  # torch.compile's mode


def resolve_compile(
    compile: str | bool, mode: str, algo: Algorithm, iterations: int = 0, shapes_vary: bool = False
) -> bool:
    """auto: compile the vmapped meta-batch of a model without convolutions (5x plain vmap on the
    sinusoid MLP, seconds to compile), and a convolutional meta-gradient checked compiled
    (`algo.capabilities.compiles`), looped or vmapped, when the run plans at least
    COMPILE_PAYS_AFTER meta-batches. Never with running BatchNorm statistics, which only the
    uncompiled loop updates, nor for tasks in sequence (`algo.sequential_setting`), nor when the
    training episodes' shapes vary (`shapes_vary`: task.min_shots or task.min_queries), where
    each shape compiles anew: the Neural Process on gp_1d (3..9 contexts, 2..9 further targets)
    took 6 minutes for its first 5 iterations compiled, against 11-12 iterations/s uncompiled."""
    if compile not in COMPILE:
        raise ConfigError(f"compile={compile!r} is not known. Use auto, true or false.")
    if compile != "auto":
        return bool(compile)
    if batchnorm.keeps_running_statistics(algo) or getattr(algo, "sequential_setting", None):
        return False
    if shapes_vary:
        return False
    if not has_convolutions(algo):
        return mode == "vmap"
    return algo.capabilities.compiles and iterations >= COMPILE_PAYS_AFTER


def meta_gradient(algo: Algorithm, vmapped: bool, ways: int, steps: int | None):
    """grad of the mean task loss over one task (or, vmapped, a meta-batch) with respect to the
    parameters; returns (gradients, (loss, score)). Compiled by the engine once per shape."""

    def objective(params, *task_tensors):
        fn = partial(algo.task_loss, params, ways=ways, steps=steps)
        losses, scores = (
            vmap(fn, randomness="different")(*task_tensors) if vmapped else fn(*task_tensors)
        )
        return losses.mean(), (losses.detach().mean(), scores.mean())

    return torch.func.grad(objective, has_aux=True)


def compile_options(mode: str, device: torch.device) -> dict:
    """torch.compile's options for `mode`. On a CPU, convolutions keep the NCHW layout: inductor's
    switch to NHWC (layout_optimization) made compiled second-order MAML 1.18x slower on W1 and
    about 1.1x on W3, one thread (scripts/bench.py shapes, docs/results.md)."""
    from torch._inductor import list_mode_options  # inductor loads only when compiling

    options = dict(list_mode_options(mode))
    if device.type == "cpu":
        options["layout_optimization"] = False
    return options
