"""Poison by physics: readings that are never learned, whatever the modes seen so far.

Three kinds, none of them measured against the fitted spread (a valve parked at exactly 0 % that starts to move
is a change of mode, thousands of its fitted standard deviations away, not a broken sensor):

- non-finite values (the detector checks those itself);
- sentinel magnitudes, |x| >= `sentinel_magnitude` (1e15 by default), and any of `sentinel_values` (e.g. -9999,
  what some historians write for "no reading");
- per-channel physical bounds from configuration (a tank level below 0 % or above 100 %).

Such a record is scored (so it still ranks and names its channel), always alerts and teaches nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from streammoe.model.config import PoisonConfig

__all__ = ["PhysicalLimits", "PoisonConfig"]


class PhysicalLimits:
    """The poison rules of one channel set, as tensors (built once per detector; not learned, not saved)."""

    def __init__(self, cfg: PoisonConfig, channels: Sequence[str]) -> None:
        unknown = sorted(set(cfg.bounds) - set(channels))
        if unknown:
            raise ValueError(f"poison.bounds names channels the model does not have: {unknown}")
        self.magnitude = cfg.sentinel_magnitude
        self.sentinels = torch.tensor(sorted(set(cfg.sentinel_values)), dtype=torch.float32)
        lo = [cfg.bounds.get(c, (None, None))[0] for c in channels]
        hi = [cfg.bounds.get(c, (None, None))[1] for c in channels]
        self.low = torch.tensor([-math.inf if v is None else v for v in lo], dtype=torch.float32)
        self.high = torch.tensor([math.inf if v is None else v for v in hi], dtype=torch.float32)
        self.has_bounds = bool(cfg.bounds)

    def poisoned(self, x: Tensor, observed: Tensor | None = None) -> Tensor:
        """(B,) True for finite rows (of raw records) with a sentinel or a reading outside its physical bounds;
        `observed` (B, C) bool: only those readings are judged (a missing one holds a placeholder)."""
        return self.poisoned_readings(x, observed).any(dim=1)

    def poisoned_readings(self, x: Tensor, observed: Tensor | None = None) -> Tensor:
        """(B, C) the readings `poisoned` judges so: an out-of-range alert names them first."""
        bad = x.abs() >= self.magnitude
        if self.sentinels.numel():
            bad |= torch.isin(x, self.sentinels.to(x.device, x.dtype))
        if self.has_bounds:
            bad |= (x < self.low.to(x.device, x.dtype)) | (x > self.high.to(x.device, x.dtype))
        if observed is not None:
            bad &= observed
        return bad
