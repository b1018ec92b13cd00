"""Per-channel standardisation learned from the data.

The global scaler (all of a fit's records) is what the fit clusters in and the unit of the uncertainty
breakdown; each expert has its own location and scale (model/experts.py) from `location_scale`."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

# A channel that was constant in training still gets a finite scale, so a later change of it reads as a large
# but finite deviation. `transform` clips (for the fit's clustering only: experts standardise raw records
# themselves, model/experts.py).
MIN_STD = 1e-2
CLIP = 50.0
# A fit sample has no model to compare with yet: a reading beyond RANGE spreads of nearly all of the sample
# (`implausible_rows`) is left out of the daemon's warm-up fit. Online, poison is decided by physics instead
# (model/poison.py), never by the distance from the modes seen so far.
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


def std_floor(mean: Tensor) -> Tensor:
    """The smallest scale a channel gets: a channel constant in its records still has a finite one."""
    return MIN_STD * torch.clamp(mean.abs(), min=1.0)


@torch.no_grad()
def location_scale(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and floored standard deviation per channel of raw records (N, C), in x's dtype (one expert's units)."""
    x64 = x.to(torch.float64)
    mean = x64.mean(0) if x.shape[0] else torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    std = x64.std(0, correction=0) if x.shape[0] > 1 else torch.zeros_like(mean)
    return mean.to(x.dtype), torch.maximum(std, std_floor(mean)).to(x.dtype)


class RunningScaler(nn.Module):
    """Running mean/variance per channel (Chan et al.'s parallel update, so batches merge exactly)."""

    count: Tensor
    mean: Tensor
    m2: Tensor

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
        return torch.maximum(var.sqrt(), std_floor(self.mean))

    def transform(self, x: Tensor) -> Tensor:
        mean = self.mean.to(x.dtype)
        std = self.std.to(x.dtype)
        return ((x - mean) / std).clamp(-CLIP, CLIP)
