"""Short-term memory of records that no expert explains.

A new operating mode shows as a sustained run of such records; scattered anomalies and short bursts do not.
So the memory answers two questions, both over the last `window` records: were at least `min_records` of them
unexplained, and were they dense (`min_density` of the window)? Older entries are not part of the run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from streammoe.model.config import NoveltyConfig


@dataclass
class Remembered:
    """The memory's live entries in arrival order."""

    x: Tensor  # (N, C) scaled records
    ref: Tensor  # (N,) caller's record ids (e.g. source offsets)
    ts: Tensor  # (N,) caller's timestamps


class ShortTermMemory(nn.Module):
    def __init__(self, n_channels: int, cfg: NoveltyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        m, w = cfg.memory_size, cfg.window
        self.register_buffer("x", torch.zeros(m, n_channels))
        self.register_buffer("ref", torch.zeros(m, dtype=torch.int64))
        self.register_buffer("ts", torch.zeros(m, dtype=torch.int64))
        self.register_buffer("seq", torch.full((m,), -(2**62), dtype=torch.int64))
        self.register_buffer("stored", torch.zeros((), dtype=torch.int64))
        self.register_buffer("flags", torch.zeros(w, dtype=torch.bool))
        self.register_buffer("seen", torch.zeros((), dtype=torch.int64))

    @torch.no_grad()
    def observe(self, x: Tensor, unexplained: Tensor, ref: Tensor, ts: Tensor) -> None:
        """Record one batch of valid records in order: all of them count towards density, the unexplained are kept."""
        n = unexplained.shape[0]
        if n == 0:
            return
        w = self.flags.shape[0]
        pos = (torch.arange(n, device=x.device) + self.seen) % w
        flags = unexplained[-w:]
        self.flags[pos[-w:]] = flags
        seq = torch.arange(n, device=x.device) + self.seen
        keep = torch.nonzero(unexplained).flatten()[-self.x.shape[0] :]
        if keep.numel():
            slots = (torch.arange(keep.numel(), device=x.device) + self.stored) % self.x.shape[0]
            self.x[slots] = x[keep].to(self.x.dtype)
            self.ref[slots] = ref[keep]
            self.ts[slots] = ts[keep]
            self.seq[slots] = seq[keep]
            self.stored += keep.numel()
        self.seen += n

    def _live(self) -> Tensor:
        return self.seq >= self.seen - self.flags.shape[0]

    def size(self) -> int:
        return int(self._live().sum())

    def density(self) -> float:
        n = int(min(int(self.seen), self.flags.shape[0]))
        return float(self.flags[:n].sum()) / n if n else 0.0

    def ready(self) -> bool:
        return self.size() >= self.cfg.min_records and self.density() >= self.cfg.min_density

    def contents(self) -> Remembered:
        live = torch.nonzero(self._live()).flatten()
        order = live[torch.argsort(self.seq[live])]
        return Remembered(self.x[order], self.ref[order], self.ts[order])

    @torch.no_grad()
    def forget(self, up_to_seq: int | None = None) -> None:
        """Drop every entry (or those that arrived before stream position `up_to_seq`)."""
        cut = self.seen if up_to_seq is None else up_to_seq
        self.seq[self.seq < cut] = -(2**62)
        self.flags.zero_()
