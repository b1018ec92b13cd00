"""Per-asset ring buffers of the last W-1 records, and the context windows of a micro-batch of many assets.

One batch is assembled without a Python loop per record (only one per asset new to the store): records are
grouped by asset (stable, so an asset's records keep their order), each asset's stored past is put in front of
its records in one long sequence, and every record's window is a gather of the W positions ending at its own.
Records of one asset inside one batch therefore see each other in order, as if they had come one by one.

Gaps and order: a record more than `max_gap` (in the unit of the timestamps given) after its asset's previous
record, or before it, starts the asset's context afresh: its window holds only itself and the records after
it. The rule depends only on consecutive timestamps, which are stored with the records, so a restored store
decides the same. It never raises on a timestamp and never refuses a record.

Records that must not teach the context (not finite, poison: `keep` False) are held as NaN: they take their
place in the window, but none of their values enters the features of the records after them.

Memory: at most `max_assets` assets keep a buffer; past it the least recently seen are evicted (counted in
`evicted`, logged at most once a minute with the count since the last line), and such an asset starts afresh
when it comes back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import torch

from streammoe.logs import get_logger

log = get_logger("streammoe.context")

EVICTION_LOG_S = 60.0  # a worker tracking more assets than it may evicts on most batches: one line a minute


class ContextStore:
    """The recent past of every tracked asset as (slots, W-1, C) tensors on the model's device."""

    def __init__(self, window: int, n_channels: int, max_assets: int, device: torch.device | str = "cpu") -> None:
        self.window, self.n_channels, self.max_assets = window, n_channels, max_assets
        self.device = torch.device(device)
        self.slots: dict[str, int] = {}
        self.values = torch.full((0, window - 1, n_channels), math.nan, device=self.device)
        self.times = torch.full((0, window - 1), math.nan, dtype=torch.float64, device=self.device)
        self.last_seen = torch.zeros(0, dtype=torch.int64, device=self.device)
        self.tick = 0  # batches assembled: the recency clock of the eviction
        self.evicted = 0
        self._free: list[int] = []  # slots no asset holds (evicted, or grown ahead)
        self._unlogged, self._logged_at = 0, -math.inf  # evictions not yet in a log line, and when the last was

    def __len__(self) -> int:
        return len(self.slots)

    def windows(
        self,
        x: torch.Tensor,
        assets: Sequence[str] | np.ndarray,
        times: torch.Tensor,
        max_gap: float,
        keep: torch.Tensor | None = None,
        update: bool = True,
    ) -> torch.Tensor:
        """(B, W, C) windows of records `x` (B, C), oldest first, NaN where there is no past. `times` (B,)
        float64; `update` False reads the store without adding these records (records it already holds)."""
        b, w, h = x.shape[0], self.window, self.window - 1
        if b == 0:
            return x.new_zeros((0, w, self.n_channels))
        names, inverse = np.unique(np.asarray(assets, dtype=str), return_inverse=True)
        slot_of = torch.as_tensor(self._slots_for(names.tolist(), update), device=self.device)
        group = torch.as_tensor(inverse.reshape(-1), device=self.device)
        order = torch.argsort(group, stable=True)
        g = group[order]
        n_groups = len(names)
        counts = torch.bincount(g, minlength=n_groups)
        first = torch.cumsum(counts, 0) - counts  # sorted index of each group's first record
        # The long sequence: per group, its h stored records then its batch records.
        pos = (g + 1) * h + torch.arange(b, device=self.device)
        length = n_groups * h + b
        seq_x = torch.full((length, self.n_channels), math.nan, dtype=x.dtype, device=self.device)
        seq_t = torch.full((length,), math.nan, dtype=torch.float64, device=self.device)
        hist_pos = (torch.arange(n_groups, device=self.device) * h + first)[:, None] + torch.arange(
            h, device=self.device
        )
        known = slot_of >= 0
        if h and bool(known.any()):
            seq_x[hist_pos[known]] = self.values[slot_of[known]].to(x.dtype)
            seq_t[hist_pos[known]] = self.times[slot_of[known]]
        xs = x[order]
        kept = xs if keep is None else torch.where(keep[order][:, None], xs, torch.full_like(xs, math.nan))
        seq_x[pos] = kept
        seq_t[pos] = times.to(torch.float64)[order]
        # A record starts afresh after a gap, a step back, or nothing before it (also each group's first position).
        prev = torch.cat([seq_t.new_full((1,), math.nan), seq_t[:-1]])
        step = seq_t - prev
        fresh = torch.isnan(prev) | (step < 0) | (step > max_gap)
        block_start = torch.zeros(length, dtype=torch.bool, device=self.device)
        block_start[torch.arange(n_groups, device=self.device) * h + first] = True
        fresh |= block_start
        idx = torch.arange(length, device=self.device)
        run_start = torch.cummax(torch.where(fresh, idx, torch.zeros_like(idx)), 0).values
        # Each record's W positions, in the batch's own order (so the windows need no reordering after), with a
        # position outside its run pointed at one all-NaN row past the sequence: a single gather builds them.
        at = torch.empty_like(pos)
        at[order] = pos
        gather = at[:, None] + torch.arange(-h, 1, device=self.device)
        gather = torch.where(gather >= run_start[at][:, None], gather, length)
        win = torch.cat([seq_x, seq_x.new_full((1, self.n_channels), math.nan)])[gather]
        win[:, -1] = x  # the record's own values, even when it teaches no context
        if update:
            self._store(seq_x, seq_t, pos, first, counts, slot_of, names.tolist())
        return win

    def _slots_for(self, names: list[str], update: bool) -> list[int]:
        """The slot of each asset (-1: none), new assets given one when `update`."""
        found = [self.slots.get(n, -1) for n in names]
        if not update:
            return found
        new = [n for n, s in zip(names, found) if s < 0]
        if new:
            self._make_room(len(new), set(names))
            free = self._free_slots(len(new))
            for n, s in zip(new, free):
                self.slots[n] = s
            found = [self.slots[n] for n in names]
        return found

    def _make_room(self, wanted: int, batch: set[str]) -> None:
        """Evict the least recently seen assets (not of this batch) until `wanted` new ones fit."""
        excess = len(self.slots) + wanted - self.max_assets
        if excess <= 0:
            return
        candidates = [(n, s) for n, s in self.slots.items() if n not in batch]
        if not candidates:
            return
        seen = self.last_seen[torch.as_tensor([s for _, s in candidates], device=self.device)]
        oldest = torch.argsort(seen, stable=True)[:excess].tolist()
        gone = [candidates[i][0] for i in oldest]
        for n in gone:
            s = self.slots.pop(n)
            self.values[s] = math.nan
            self.times[s] = math.nan
            self._free.append(s)
        self.evicted += len(gone)
        self._unlogged += len(gone)
        now = time.monotonic()
        if now - self._logged_at < EVICTION_LOG_S:
            return
        log.warning(
            "context_assets_evicted",
            evicted=self._unlogged,
            evicted_total=self.evicted,
            tracked=len(self.slots),
            max_assets=self.max_assets,
            every_s=EVICTION_LOG_S,
            hint="these assets start their context afresh when they come back (STREAMMOE_MODEL__CONTEXT__MAX_ASSETS)",
        )
        self._unlogged, self._logged_at = 0, now

    def _free_slots(self, n: int) -> list[int]:
        if len(self._free) < n:  # grow by doubling: a stream of new assets grows the tensors log-many times
            start = self.values.shape[0]
            grow = max(n - len(self._free), start, 8)
            self.values = torch.cat([self.values, self.values.new_full((grow, *self.values.shape[1:]), math.nan)])
            self.times = torch.cat([self.times, self.times.new_full((grow, self.times.shape[1]), math.nan)])
            self.last_seen = torch.cat([self.last_seen, self.last_seen.new_zeros(grow)])
            self._free += range(start, start + grow)
        taken, self._free = self._free[:n], self._free[n:]
        return taken

    def _store(
        self,
        seq_x: torch.Tensor,
        seq_t: torch.Tensor,
        pos: torch.Tensor,
        first: torch.Tensor,
        counts: torch.Tensor,
        slot_of: torch.Tensor,
        names: list[str],
    ) -> None:
        """Each group's last h positions become its asset's stored past."""
        self.tick += 1
        self.last_seen[slot_of] = self.tick
        h = self.window - 1
        if h:
            last = pos[first + counts - 1]
            take = last[:, None] + torch.arange(-h + 1, 1, device=self.device)
            self.values[slot_of] = seq_x[take].to(self.values.dtype)
            self.times[slot_of] = seq_t[take]
        if len(self.slots) > self.max_assets:  # one batch alone brought more assets than fit
            self._make_room(0, set())

    def state(self) -> dict:
        """What a checkpoint keeps: plain tensors, lists and numbers (loadable with weights_only)."""
        names = sorted(self.slots, key=self.slots.__getitem__)
        idx = torch.as_tensor([self.slots[n] for n in names], dtype=torch.int64, device=self.device)
        return {
            "window": self.window,
            "n_channels": self.n_channels,
            "assets": names,
            "values": self.values[idx].cpu(),
            "times": self.times[idx].cpu(),
            "last_seen": self.last_seen[idx].cpu(),
            "tick": self.tick,
            "evicted": self.evicted,
        }

    def load_state(self, state: dict) -> None:
        """Refuses a state of another window or channel count (ValueError): its buffers would mean otherwise."""
        if int(state["window"]) != self.window or int(state["n_channels"]) != self.n_channels:
            raise ValueError(
                f"context state for window {state['window']} and {state['n_channels']} channels, "
                f"not {self.window} and {self.n_channels}"
            )
        names = list(state["assets"])
        self.slots = {n: i for i, n in enumerate(names)}
        self.values = (
            state["values"].to(self.device, torch.float32).reshape(len(names), self.window - 1, self.n_channels)
        )
        self.times = state["times"].to(self.device, torch.float64).reshape(len(names), self.window - 1)
        self.last_seen = state["last_seen"].to(self.device, torch.int64)
        self.tick, self.evicted = int(state["tick"]), int(state["evicted"])
        self._free = []
