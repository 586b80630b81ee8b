"""Image benchmarks on this machine: the cache of a miniImageNet-sized replica, and backbone speed.

    python scripts/image_bench.py data --root /tmp/mini --layout csv    # or pickle
    python scripts/image_bench.py backbones

`data` writes a replica of miniImageNet's shape (64/16/20 classes x 600 random 84x84 images) in
the chosen real layout unless `root` already holds one, then times, each in a fresh process:
the first load (decoding into the cache), a second load (the cache mapped), and episodes/s
sampled from the mapped cache (glibc set to keep freed memory, as `metarun train` does by
default, and every page of the training split faulted in first); each reports its peak
resident memory (VmHWM, mapped cache pages included), its peak private memory (RssAnon) and
the mapped pages resident at the end, next to those of a process that only imported torch.
An existing cache is deleted first. `backbones` times forward+backward images/s at 84x84 of
Conv-4 (32 and 64 filters) and ResNet-12 on a batch of a 5-way 1-shot 15-query episode.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the replica writers live with the tests

CLASSES = {"train": 64, "val": 16, "test": 20}


def memory_mb(field: str) -> float:
    """A field of /proc/self/status (VmHWM: peak resident; RssAnon: private memory; RssFile:
    resident pages of mapped files, the cache among them, which the kernel can drop)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class PeakPrivateMemory(threading.Thread):
    """Polls RssAnon every 10 ms: the peak private memory, which VmHWM mixes with mapped pages."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0.0

    def run(self) -> None:
        while True:
            self.peak = max(self.peak, memory_mb("RssAnon"))
            time.sleep(0.01)


def phase(name: str, root: str) -> dict:
    """One measurement in this process; the caller runs each in a fresh one."""
    from metarun.data.mini_imagenet import MiniImageNet
    from metarun.runtime import keep_freed_memory

    watcher = PeakPrivateMemory()
    watcher.start()
    start = time.perf_counter()
    if name == "import":
        time.sleep(0.05)
        return {"peak_mb": round(memory_mb("VmHWM")), "peak_private_mb": round(watcher.peak)}
    dataset = MiniImageNet(root, image_size=84)
    total = sum(dataset.split(split).images.shape[0] for split in ("train", "val", "test"))
    loaded = time.perf_counter() - start
    result = {"seconds": round(loaded, 2), "images": total}
    if name == "episodes":
        keep_freed_memory()  # as metarun train does (runtime.keep_freed_memory: true)
        warm = time.perf_counter()
        dataset.split("train").images.flatten()[::4096].sum()  # fault every page in once
        result["page_in_seconds"] = round(time.perf_counter() - warm, 2)
        for shots, tasks in ((1, 4), (5, 2)):
            sampler = dataset.sampler("train", 5, shots, 15, torch.device("cpu"))
            generator = torch.Generator().manual_seed(0)
            sampler.sample(tasks, generator)
            start, count = time.perf_counter(), 0
            while time.perf_counter() - start < 5:
                sampler.sample(tasks, generator)
                count += tasks
            result[f"episodes_per_s_5w{shots}s"] = round(count / (time.perf_counter() - start), 1)
    result["peak_mb"] = round(memory_mb("VmHWM"))
    result["peak_private_mb"] = round(watcher.peak)
    result["mapped_resident_mb"] = round(memory_mb("RssFile"))
    return result


def data(root: Path, layout: str) -> None:
    import image_replicas

    if not root.exists():
        start = time.perf_counter()
        write = {
            "csv": image_replicas.write_mini_imagenet_csv,
            "pickle": image_replicas.write_mini_imagenet_pickle,
        }[layout]
        write(root, CLASSES, 600, size=84)
        print(f"wrote the {layout} replica in {time.perf_counter() - start:.0f} s")
    for stale in [*root.glob("mini_imagenet_*.pt"), *root.glob("mini_imagenet_*.uint8")]:
        stale.unlink()
    for name in ("import", "first load (decode + cache)", "second load (mapped)", "episodes"):
        key = name.split()[0]
        output = subprocess.run(
            [sys.executable, __file__, "phase", key, str(root)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        print(name, json.loads(output.strip().splitlines()[-1]))


def backbones() -> None:
    from metarun.backbones.conv4 import Conv4
    from metarun.backbones.resnet12 import ResNet12

    batch = torch.rand(80, 3, 84, 84)
    models = {
        "conv4 (32 filters)": Conv4((3, 84, 84), hidden=32),
        "conv4 (64 filters)": Conv4((3, 84, 84), hidden=64),
        "resnet12": ResNet12((3, 84, 84)),
    }
    print(f"threads: {torch.get_num_threads()}; batch of {len(batch)} images at 84x84")
    for name, model in models.items():
        model(batch).square().mean().backward()  # warm-up
        start, images = time.perf_counter(), 0
        while time.perf_counter() - start < 10:
            model(batch).square().mean().backward()
            images += len(batch)
        rate = images / (time.perf_counter() - start)
        parameters = sum(p.numel() for p in model.parameters())
        print(f"{name}: {rate:.0f} images/s forward+backward ({parameters / 1e6:.2f} M parameters)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["data", "backbones", "phase"])
    parser.add_argument("args", nargs="*")
    parser.add_argument("--root", type=Path, default=Path("/tmp/mini_replica"))
    parser.add_argument("--layout", choices=["csv", "pickle"], default="csv")
    options = parser.parse_args()
    if options.mode == "phase":
        print(json.dumps(phase(*options.args)))
    elif options.mode == "data":
        data(options.root, options.layout)
    else:
        backbones()


if __name__ == "__main__":
    main()
