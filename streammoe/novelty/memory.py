"""Short-term memory of records that no expert explains.

A new operating mode shows as a sustained run of such records; scattered anomalies and short bursts do not.
So the memory answers two questions, both over the last `window` records: does the latest run (unexplained
records without a gap of more than window/10 explained ones) hold at least `min_records`, and were the
unexplained records dense (`min_density` of the window)? Older entries are not part of the run.

A machine can also show a new state in single records scattered in time (a recurring job, a spread its experts
never learned). The second trigger counts the unexplained records kept from the last `rate_window` records:
`min_rate` of them, far above the ~1 % below the learning threshold when nothing changed, and the growth code
tries a candidate on all of them (with a stricter test, see growth.py).
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

    def _run(self) -> Tensor:
        """Slots of the latest run, in arrival order: the live entries after the last gap of more than
        window/10 explained records. An earlier burst in the same window (a fault just before a new mode)
        is not part of the run, so the candidate never learns it and the event names the right first record."""
        live = torch.nonzero(self._live()).flatten()
        order = live[torch.argsort(self.seq[live])]
        if order.numel() < 2:
            return order
        gaps = torch.diff(self.seq[order])
        breaks = torch.nonzero(gaps > max(1, self.flags.shape[0] // 10)).flatten()
        return order[int(breaks[-1]) + 1 :] if breaks.numel() else order

    def size(self) -> int:
        return int(self._run().numel())

    def density(self) -> float:
        n = int(min(int(self.seen), self.flags.shape[0]))
        return float(self.flags[:n].sum()) / n if n else 0.0

    def ready(self) -> bool:
        return self.size() >= self.cfg.min_records and self.density() >= self.cfg.min_density

    def _recent(self) -> Tensor:
        """Slots of every entry from the last `rate_window` records, in arrival order."""
        recent = torch.nonzero(self.seq >= self.seen - self.cfg.rate_window).flatten()
        return recent[torch.argsort(self.seq[recent])]

    def rate(self) -> float:
        """Unexplained records kept from the last `rate_window` records, as a share of that window."""
        return self._recent().numel() / self.cfg.rate_window

    def rate_ready(self) -> bool:
        return self.cfg.min_rate > 0 and self.rate() >= self.cfg.min_rate

    def trigger(self) -> str | None:
        """'run' for a dense run, 'rate' for a sustained rate of scattered ones, None while neither holds."""
        if self.ready():
            return "run"
        if self.rate_ready():
            return "rate"
        return None

    def contents(self, trigger: str = "run") -> Remembered:
        kept = self._run() if trigger == "run" else self._recent()
        return Remembered(self.x[kept], self.ref[kept], self.ts[kept])

    @torch.no_grad()
    def forget(self, up_to_seq: int | None = None) -> None:
        """Drop every entry (or those that arrived before stream position `up_to_seq`)."""
        cut = self.seen if up_to_seq is None else up_to_seq
        self.seq[self.seq < cut] = -(2**62)
        self.flags.zero_()
