"""Per-channel standardisation learned from the data."""

from __future__ import annotations

import torch
from torch import Tensor, nn

# A channel that was constant in training still gets a finite scale, so a later change of it reads as a large
# but finite deviation; scaled values are clipped so one absurd reading cannot overflow the experts.
MIN_STD = 1e-2
CLIP = 50.0


class RunningScaler(nn.Module):
    """Running mean/variance per channel (Chan et al.'s parallel update, so batches merge exactly)."""

    def __init__(self, n_channels: int) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(n_channels, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(n_channels, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        x = x.to(torch.float64)
        n_b = x.shape[0]
        if n_b == 0:
            return
        mean_b = x.mean(0)
        m2_b = ((x - mean_b) ** 2).sum(0)
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self.mean
        self.mean += delta * (n_b / n)
        self.m2 += m2_b + delta.pow(2) * (n_a * n_b / n)
        self.count.fill_(n)

    @property
    def std(self) -> Tensor:
        var = self.m2 / self.count.clamp(min=1.0)
        floor = MIN_STD * torch.clamp(self.mean.abs(), min=1.0)
        return torch.maximum(var.sqrt(), floor)

    def transform(self, x: Tensor) -> Tensor:
        mean = self.mean.to(x.dtype)
        std = self.std.to(x.dtype)
        return ((x - mean) / std).clamp(-CLIP, CLIP)
