"""The standard CIFAR augmentation, applied to whole batches of tensors on the device they live on.

Random crop after zero padding (``padding`` pixels each side) and a random horizontal flip, as
``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()`` do image by image. The images here are already
normalised, so the padding is the *normalised* value of a black pixel, ``fill = -mean / std`` per channel.

The random offsets and flips are drawn on the CPU from the training run's generator, for a whole
(global) batch at once: a run is reproducible from its seed, resumes exactly, and in data-parallel
training every rank draws the same numbers and applies its own slice of them (:class:`CropFlip`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["CropFlip", "apply_crop_flip", "crop_flip", "draw_crop_flip"]


def draw_crop_flip(n: int, generator: torch.Generator, padding: int) -> torch.Tensor:
    """``(n, 3)`` int64 on the CPU: row offset, column offset (``0..2·padding``) and flip (0/1) per image."""
    return torch.cat(
        [
            torch.randint(0, 2 * padding + 1, (n, 2), generator=generator),
            torch.randint(0, 2, (n, 1), generator=generator),
        ],
        dim=1,
    )


def apply_crop_flip(x: torch.Tensor, params: torch.Tensor, fill: torch.Tensor, padding: int) -> torch.Tensor:
    """Crop and flip the images ``x`` (N, C, H, W) as ``params`` (from :func:`draw_crop_flip`) say."""
    n, c, h, w = x.shape
    params = params.to(x.device, non_blocking=True)
    padded = fill.to(x.dtype).view(1, c, 1, 1).expand(n, c, h + 2 * padding, w + 2 * padding).clone()
    padded[:, :, padding : padding + h, padding : padding + w] = x
    rows = params[:, 0:1] + torch.arange(h, device=x.device)  # (n, h)
    cols = params[:, 1:2] + torch.arange(w, device=x.device)  # (n, w)
    flip = params[:, 2:3].bool()
    cols = torch.where(flip, cols.flip(1), cols)  # a mirrored window reads its columns backwards
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch, rows.unsqueeze(2), cols.unsqueeze(1)]  # (n, h, w, c)
    return out.permute(0, 3, 1, 2).contiguous(memory_format=_format_of(x))


def _format_of(x: torch.Tensor) -> torch.memory_format:
    return (
        torch.channels_last
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        else torch.contiguous_format
    )


def crop_flip(
    x: torch.Tensor, generator: torch.Generator, fill: torch.Tensor, padding: int = 4
) -> torch.Tensor:
    """Random padded crop + horizontal flip of every image in ``x``, drawn from ``generator``."""
    return apply_crop_flip(x, draw_crop_flip(len(x), generator, padding), fill, padding)


@dataclass
class CropFlip:
    """The augmentation of one training run: ``fill`` is the normalised black pixel per channel."""

    fill: torch.Tensor
    padding: int = 4

    @classmethod
    def for_dataset(
        cls, mean: float | tuple[float, ...], std: float | tuple[float, ...], channels: int
    ) -> CropFlip:
        m = torch.as_tensor(mean, dtype=torch.float32).expand(channels)
        s = torch.as_tensor(std, dtype=torch.float32).expand(channels)
        return cls(fill=-m / s)

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return draw_crop_flip(n, generator, self.padding)

    def apply(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return apply_crop_flip(x, params, self.fill.to(x.device), self.padding)
