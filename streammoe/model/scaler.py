"""Per-channel standardisation learned from the data."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

# A channel that was constant in training still gets a finite scale, so a later change of it reads as a large
# but finite deviation; scaled values are clipped so one absurd reading cannot overflow the experts.
MIN_STD = 1e-2
CLIP = 50.0
# Past the clip the experts see the same value whatever the reading was, so learning from such a record would
# teach that anything this large is normal. A far-away new mode (tens of standard deviations) is still learned;
# a reading beyond RANGE standard deviations is a broken sensor or a sentinel (1e30, -9999), never learned.
RANGE = 1000.0
# Share of a fit sample in each tail that `implausible_rows` does not look at: a mode with more rows than this
# sets the spread itself and is never dropped.
TAIL = 0.001


def implausible_rows(x: np.ndarray) -> np.ndarray:
    """(N,) True for rows of a fit sample with a channel more than RANGE spreads from the channel's median.

    Before any model exists there is no fitted scale to compare with, and one reading of 1e30 among thousands
    would set a channel's standard deviation to ~1e28 (the channel goes blind and 1e30 looks in range for
    good). The spread is the central 99.8 % range (floored like the scaler's), so only readings absurd
    against nearly all of the sample go, never a mode, unless garbage is more than TAIL of the sample."""
    x = x.astype(np.float64)
    med = np.median(x, axis=0)
    lo = np.quantile(x, TAIL, axis=0, method="higher")  # no interpolation towards an absurd neighbour
    hi = np.quantile(x, 1 - TAIL, axis=0, method="lower")
    spread = np.maximum(hi - lo, MIN_STD * np.maximum(np.abs(med), 1.0))
    return (np.abs(x - med) > RANGE * spread).any(axis=1)


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

    def out_of_range(self, x: Tensor) -> Tensor:
        """(B,) True where any channel lies more than RANGE standard deviations from the fitted mean."""
        mean = self.mean.to(x.dtype)
        bound = (RANGE * self.std).to(x.dtype)
        return ((x - mean).abs() > bound).any(dim=1)

    def transform(self, x: Tensor) -> Tensor:
        mean = self.mean.to(x.dtype)
        std = self.std.to(x.dtype)
        return ((x - mean) / std).clamp(-CLIP, CLIP)
