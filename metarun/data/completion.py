"""Image completion, the generative use of neural processes (Garnelo et al. 2018, Sec. 4.2): each
image is one task whose inputs are pixel coordinates (row, column, scaled to [-1, 1]) and whose
targets are the pixels' intensities in [0, 1]; the support set is `shots` pixels drawn at random.

Training episodes: `shots` context pixels and `shots + queries` target pixels (the contexts are
targets too, as the CNP notebook trains). Validation and test episodes: every pixel of the
image is a target (`queries` is not used), so the test NLL is per pixel of whole images. Images
come from any dataset with `split_images` (Omniglot: dataset=omniglot_completion), split as it
splits them, so test images are drawings of characters never seen in training.
"""

from __future__ import annotations

import torch

from metarun.episode import Episode
from metarun.errors import ConfigError


def pixel_coordinates(height: int, width: int) -> torch.Tensor:
    """[H*W, 2]: (row, column) of every pixel in reading order, scaled to [-1, 1]."""
    rows, columns = torch.meshgrid(
        torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij"
    )
    return torch.stack([rows.flatten(), columns.flatten()], dim=-1)


class CompletionSampler:
    def __init__(self, images: torch.Tensor, split: str, shots: int, queries: int) -> None:
        self.images = images.flatten(0, 1).flatten(1)  # [N, C*H*W] uint8; one channel
        pixels = self.images.shape[1]
        self.whole_images = split != "train"
        targets = pixels if self.whole_images else shots + queries
        if shots < 1 or targets > pixels or shots > pixels:
            raise ConfigError(
                f"Image completion on '{split}' images of {pixels} pixels draws shots={shots} "
                f"context pixels and {targets} target pixels; both must be between 1 and "
                f"{pixels}. Lower the shots (and, for training, shots + queries) to at most "
                f"{pixels}."
            )
        self.shots, self.targets = shots, targets
        self.coordinates = pixel_coordinates(*images.shape[-2:]).to(images.device)

    def draw(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        """[tasks, 1 + targets]: the image's index, then its target pixels, contexts first."""
        image = torch.randint(len(self.images), (num_tasks, 1), generator=generator)
        pixels = self.images.shape[1]
        order = torch.rand(num_tasks, pixels, generator=generator).argsort(dim=1)
        if self.whole_images:  # contexts first, then every other pixel in reading order
            is_context = torch.zeros(num_tasks, pixels, dtype=torch.bool)
            is_context.scatter_(1, order[:, : self.shots], True)
            order = torch.cat([order[:, : self.shots], _others(is_context)], dim=1)
        return torch.cat([image, order[:, : self.targets]], dim=1)

    def build(self, plan: torch.Tensor) -> Episode:
        plan = plan.to(self.images.device)
        values = self.images[plan[:, 0]].float().div_(255.0)  # [tasks, pixels]
        targets = plan[:, 1:]
        x = self.coordinates[targets]  # [tasks, targets, 2]
        y = values.gather(1, targets).unsqueeze(-1)  # [tasks, targets, 1]
        return Episode(x[:, : self.shots], y[:, : self.shots], x, y, ways=1)

    def sample(self, num_tasks: int, generator: torch.Generator) -> Episode:
        return self.build(self.draw(num_tasks, generator))


def _others(is_context: torch.Tensor) -> torch.Tensor:
    """Per row, the indices where `is_context` is False, in increasing order."""
    return (~is_context).nonzero()[:, 1].view(len(is_context), -1)


class ImageCompletion:
    """Completion tasks from the images of another dataset (its splits, its image size)."""

    metric = "mse"
    input_shape = (2,)

    def __init__(self, images) -> None:
        self.images = images
        self._split_images: dict[str, torch.Tensor] = {}  # a sampler per shot count shares them

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.images.input_shape)

    def out_features(self, ways: int) -> int:
        return 1

    def preprocess(self, coordinate: torch.Tensor) -> torch.Tensor:
        """A (row, column) pair in [-1, 1] -> the model's input [2]."""
        return torch.as_tensor(coordinate, dtype=torch.float32).reshape(2)

    def protocol(self) -> dict:
        return {
            "dataset": "image_completion",
            "images": self.images.protocol(),
            "targets": "contexts plus queries (training); every pixel (test)",
        }

    def sampler(
        self, split: str, ways: int, shots: int, queries: int, device: torch.device
    ) -> CompletionSampler:
        if split not in self._split_images:
            self._split_images[split] = self.images.split_images(split)
        images = self._split_images[split].to(device)
        if images.shape[2] != 1:
            raise ConfigError(
                f"Image completion reads one-channel images; these have {images.shape[2]} channels."
            )
        return CompletionSampler(images, split, shots, queries)
