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

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from streammoe.model.config import NoveltyConfig

MIN_MISFITS = 32  # unexplained records of one expert before it is tested for lock-in (novelty/lockin.py needs them)
BURST = 16  # an entry with this many others within BURST records either side is part of a dense episode


@dataclass
class Remembered:
    """The memory's live entries in arrival order."""

    x: Tensor  # (N, C) raw records (never saturated: a new expert learns its own scale from them)
    ref: Tensor  # (N,) caller's record ids (e.g. source offsets)
    ts: Tensor  # (N,) caller's timestamps


class ShortTermMemory(nn.Module):
    x: torch.Tensor
    ref: torch.Tensor
    ts: torch.Tensor
    seq: torch.Tensor
    stored: torch.Tensor
    flags: torch.Tensor
    seen: torch.Tensor
    assigned: torch.Tensor
    misfits: torch.Tensor
    stream_counts: torch.Tensor
    since_test: torch.Tensor
    fast_seen: torch.Tensor

    def __init__(self, n_channels: int, cfg: NoveltyConfig, k_max: int = 1) -> None:
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
        # Per expert, records assigned to it and how many of them went unexplained, each decayed by e per
        # lockin_window records assigned to that expert (its last ~lockin_window records), since its last test.
        self.register_buffer("assigned", torch.zeros(k_max, dtype=torch.float64))
        self.register_buffer("misfits", torch.zeros(k_max, dtype=torch.float64))
        # The whole stream's records and unexplained ones, decayed by e per lockin_window records.
        self.register_buffer("stream_counts", torch.zeros(2, dtype=torch.float64))
        # Per expert, stream records seen since its last lock-in test (or since it was added).
        self.register_buffer("since_test", torch.zeros(k_max, dtype=torch.int64))
        # Stream position of the last fast try (novelty/growth.py), so a run is retried every fast_retry records.
        self.register_buffer("fast_seen", torch.full((), -(2**40), dtype=torch.int64))

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args: Any, **kwargs: Any) -> None:
        # Models saved before the lock-in counts existed load with none counted yet.
        for name in ("assigned", "misfits", "since_test", "stream_counts", "fast_seen"):
            state_dict.setdefault(prefix + name, torch.zeros_like(getattr(self, name)))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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

    @torch.no_grad()
    def count_modes(self, mode: Tensor, unexplained: Tensor) -> None:
        """Count each expert's assigned records and its unexplained ones (read by the lock-in check and by
        `unexplained_share`)."""
        k = self.assigned.shape[0]
        n = torch.bincount(mode, minlength=k)[:k].to(self.assigned.dtype)
        decay = torch.exp(-n / self.cfg.lockin_window)
        self.assigned.mul_(decay).add_(n)
        self.misfits.mul_(decay).add_(torch.bincount(mode[unexplained], minlength=k)[:k].to(self.misfits.dtype))
        self.since_test += mode.shape[0]
        total = torch.tensor(
            [mode.shape[0], int(unexplained.sum())], dtype=self.stream_counts.dtype, device=self.stream_counts.device
        )
        self.stream_counts.mul_(math.exp(-mode.shape[0] / self.cfg.lockin_window)).add_(total)

    @torch.no_grad()
    def reset_expert(self, k: int) -> None:
        """Expert k starts counting afresh (a new expert in its slot, or it was just tested for lock-in)."""
        self.assigned[k] = 0
        self.misfits[k] = 0
        self.since_test[k] = 0

    def unexplained_share(self) -> Tensor:
        """Per expert, the share of about its last lockin_window records that went unexplained (0 with none)."""
        return self.misfits / self.assigned.clamp(min=1.0)

    def locked_in(self) -> list[tuple[int, float]]:
        """Experts whose unexplained share over about their last lockin_window records reached `lockin_share`, with
        that share, once MIN_MISFITS of their records went unexplained (what the test needs; a small expert whose
        records all alert qualifies as soon as a large one at the share) and lockin_window/2 stream records went by
        since their last test or their start (a short episode, a long anomaly among them, is over before; and
        tests stay rare). Counts restart."""
        if self.cfg.lockin_share <= 0:
            return []
        share = self.unexplained_share()
        # The stream's own unexplained share must be past lockin_share too: one expert that catches a rare fault
        # recurring in the same shape (1 % of the stream, all of it under that expert) is not locked in; it alerts.
        stream_share = float(self.stream_counts[1] / self.stream_counts[0].clamp(min=1.0))
        if stream_share < self.cfg.lockin_share:
            return []
        hit = (
            (self.misfits >= MIN_MISFITS)
            & (share >= self.cfg.lockin_share)
            & (self.since_test >= self.cfg.lockin_window // 2)
        )
        out = [(int(k), float(share[k])) for k in torch.nonzero(hit).flatten()]
        for k, _ in out:
            self.reset_expert(k)
        return out

    def recent_entries(self) -> tuple[Tensor, Remembered]:
        """Slots and contents of the entries from the last `rate_window` records, in arrival order."""
        kept = self._recent_all()
        return kept, Remembered(self.x[kept], self.ref[kept], self.ts[kept])

    @torch.no_grad()
    def drop(self, slots: Tensor) -> None:
        """Drop the given entries (the lock-in breaker's records, once it has re-measured the tail with them)."""
        self.seq[slots] = -(2**62)

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

    def _recent_all(self) -> Tensor:
        """Slots of every entry from the last `rate_window` records, in arrival order."""
        recent = torch.nonzero(self.seq >= self.seen - self.cfg.rate_window).flatten()
        return recent[torch.argsort(self.seq[recent])]

    def _recent(self) -> Tensor:
        """Slots of the scattered entries from the last `rate_window` records, in arrival order. Entries of a
        dense episode (BURST of them within 2 * BURST records) are left out: a burst or a long fault shorter than
        min_records is not a new mode, and the rate trigger would otherwise adopt it once it ended."""
        recent = self._recent_all()
        seq = self.seq[recent]
        near = torch.searchsorted(seq, seq + BURST, right=True) - torch.searchsorted(seq, seq - BURST)
        return recent[near < BURST]

    def rate(self) -> float:
        """Unexplained records kept from the last `rate_window` records, as a share of that window."""
        return self._recent().numel() / self.cfg.rate_window

    def rate_ready(self) -> bool:
        return self.cfg.min_rate > 0 and self.rate() >= self.cfg.min_rate

    def trigger(self) -> str | None:
        """'run' for a dense run, 'fast' for a dense run not yet min_records long, 'rate' for a sustained rate of
        scattered ones, None while none holds. While the window is dense a run is building: the rate trigger
        waits for it (tried on the scattered set, it would take and forget the run's first records)."""
        if self.ready():
            return "run"
        if fast_ready(self):
            return "fast"
        if self.rate_ready() and not building(self):
            return "rate"
        return None

    def contents(self, trigger: str = "run") -> Remembered:
        if trigger == "fast":
            kept = self._run()[-fast_size(self) :]
        else:
            kept = self._run() if trigger == "run" else self._recent()
        return Remembered(self.x[kept], self.ref[kept], self.ts[kept])

    @torch.no_grad()
    def forget(self, up_to_seq: int | None = None) -> None:
        """Drop every entry (or those that arrived before stream position `up_to_seq`)."""
        cut = self.seen if up_to_seq is None else up_to_seq
        self.seq[self.seq < cut] = -(2**62)
        self.flags.zero_()


def run_share(memory: ShortTermMemory, run: Tensor) -> float:
    """The run's share of the records since its first one (1.0: every record since then unexplained)."""
    return run.numel() / max(1, int(memory.seen - memory.seq[run[0]])) if run.numel() else 0.0


def fast_size(memory: ShortTermMemory) -> int:
    """Records of a fast try: fast_records, at most what the memory holds (a model saved with a small memory)."""
    return min(memory.cfg.fast_records, memory.x.shape[0])


def fast_ready(memory: ShortTermMemory) -> bool:
    """The run's newest fast_records came with few explained records between them (fast_density of the records
    since the first of them), and fast_retry records went by since the last fast try: worth asking whether they
    lie far from every expert (novelty/growth.py)."""
    cfg = memory.cfg
    if cfg.fast_records <= 0 or int(memory.seen - memory.fast_seen) < cfg.fast_retry:
        return False
    run, n = memory._run(), fast_size(memory)
    return run.numel() >= n and run_share(memory, run[-n:]) >= cfg.fast_density


def building(memory: ShortTermMemory) -> bool:
    """A run is building: at least MIN_MISFITS records, min_density of the records since it began."""
    run = memory._run()
    return run.numel() >= MIN_MISFITS and run_share(memory, run) >= memory.cfg.min_density
