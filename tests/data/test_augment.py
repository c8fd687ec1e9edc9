"""Per-batch augmentation (haloprune.data.augment): random crop + flip, reproducible and correct."""

from __future__ import annotations

import torch

from haloprune.data.augment import crop_flip


def test_crop_flip_reproducible_and_correct() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    fill = torch.tensor([-1.0, -2.0, -3.0])
    a = crop_flip(x, torch.Generator().manual_seed(5), fill, padding=2)
    b = crop_flip(x, torch.Generator().manual_seed(5), fill, padding=2)
    assert torch.equal(a, b) and a.shape == x.shape
    # every output is a shifted (and maybe mirrored) window of the zero-padded image
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    padded = torch.where(padded == 0, fill.view(1, 3, 1, 1).expand_as(padded), padded)
    padded[:, :, 2:-2, 2:-2] = x
    for i in range(2):
        windows = [
            w
            for di in range(5)
            for dj in range(5)
            for w in (padded[i, :, di : di + 8, dj : dj + 8],)
            for w in (w, w.flip(-1))
        ]
        assert any(torch.equal(a[i], w) for w in windows)
    many = crop_flip(x.repeat(50, 1, 1, 1), torch.Generator().manual_seed(0), fill, padding=2)
    assert not all(torch.equal(m, many[0]) for m in many)  # not the identity every time
