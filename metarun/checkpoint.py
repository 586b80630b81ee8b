"""One checkpoint format: a dict holding everything to resume or evaluate from the file alone.

Writes are atomic (temporary file, flush, fsync, rename) so a crash mid-save never
destroys the previous checkpoint; reads never execute pickled code.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from metarun.errors import ConfigError

FORMAT_VERSION = 1


def atomic_save(obj: dict, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(obj, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict:
    """Reads a checkpoint safely (weights_only) or explains why it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"No checkpoint at {path}. Train first, or pass checkpoint=best|last|<path to a .pt file>.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ConfigError(f"The checkpoint {path} cannot be read ({type(error).__name__}: {error}). "
                          "It is truncated, corrupted or not a metarun checkpoint: use another one "
                          "(checkpoint=last or checkpoint=best) or retrain.") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION or "model" not in state:
        raise ConfigError(f"{path} is not a metarun checkpoint (format {FORMAT_VERSION}). "
                          "Pass a file written by `metarun train`.")
    return state


def restore_model(model: torch.nn.Module, state: dict, path: Path) -> None:
    """Loads weights, turning a shape mismatch into a clear error instead of a traceback."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        detail = str(error).split("\n", 1)[-1].strip()
        raise ConfigError(f"The checkpoint {path} was saved by a model of a different shape than "
                          f"the current configuration builds ({detail[:400]}). Evaluate it with the "
                          "config saved beside it (metarun eval run_dir=<its run folder>) or change "
                          "backbone/algo/task settings back to the ones it was trained with.") from None
