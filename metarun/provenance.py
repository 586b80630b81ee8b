"""Which code made a result: package version, git commit and whether the tree was clean, torch,
device, and how each start of a run computed (processes, threads, engine)."""

from __future__ import annotations

import json
import subprocess
from importlib import metadata
from pathlib import Path

import torch

SOURCE = Path(__file__).resolve().parent.parent


def _git(*arguments: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(SOURCE), *arguments], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def code_stamp(device: torch.device) -> dict:
    """{"metarun", "commit", "uncommitted_changes", "torch", "device"}; commit and
    uncommitted_changes are None when metarun does not run from a git checkout."""
    try:
        version = metadata.version("metarun")
    except metadata.PackageNotFoundError:
        version = None
    commit = _git("rev-parse", "HEAD") if (SOURCE / ".git").exists() else None
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {
        "metarun": version,
        "commit": commit,
        "uncommitted_changes": bool(status) if commit else None,
        "torch": torch.__version__,
        "device": name,
    }


def record_code(run_dir: Path, stamp: dict, iteration: int, computation: dict) -> None:
    """Appends this process's stamp and `computation` (processes, threads and the engine's
    settings) to the run folder's code.json: one entry per start or resume, with the iteration
    it started from."""
    entries = _entries(run_dir)
    entries.append({"started_at_iteration": iteration, **stamp, "computation": computation})
    (Path(run_dir) / "code.json").write_text(json.dumps(entries, indent=2))


def _entries(run_dir: Path) -> list[dict]:
    """code.json's entries, oldest first; none before the run's first start."""
    path = Path(run_dir) / "code.json"
    return json.loads(path.read_text()) if path.is_file() else []


def _override(value) -> str:
    """A recorded setting as a command-line override writes it (booleans in lower case)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def changed_computation(run_dir: Path, computation: dict) -> str | None:
    """A warning when a resumed run computes otherwise than its last start did (another machine,
    or other runtime settings): its results can then no longer be bit-identical to an
    uninterrupted run's. None when nothing changed or nothing was recorded."""
    entries = _entries(run_dir)
    before = entries[-1].get("computation") if entries else None
    if before is None or before == computation:
        return None
    changed = [key for key in before if computation.get(key) != before[key]]
    was = ", ".join(f"{key}={before[key]}" for key in changed)
    now = ", ".join(f"{key}={computation.get(key)}" for key in changed)
    settings = dict.fromkeys("engine" if key == "evaluation_engine" else key for key in changed)
    fix = " ".join(f"{key}={_override(before[key])}" for key in settings)
    return (
        f"metarun: warning: this run computed with {was} and resumes with {now}, so it will not "
        f"be bit-identical to an uninterrupted run (float rounding differs). To match, add {fix} "
        "to the resume command."
    )
