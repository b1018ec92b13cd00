"""Per-mode calibration: turns a raw score into a p-value so one threshold means the same in every mode.

Each expert keeps a ring buffer of recent scores of normal records assigned to it (the empirical null
distribution of that mode); one more buffer pools all modes and stands in for a mode that has too few scores
yet. Inside the buffer the p-value is the empirical upper-tail frequency; beyond its upper tail it follows an
exponential tail (peaks over threshold) fixed by the 95 % and 99 % quantiles, so p-values keep falling
smoothly past the largest reference score instead of flattening at 1/(n+1).

Records judged anomalous still enter the buffer, clipped to the score of the learning threshold: leaving them
out would truncate the null at every update and walk the quantiles down (ever more false alarms), letting them
in unclipped would let a burst of anomalies raise the bar for itself.

Clipping at the tail's own 99 % score is a ratchet, though: no entry can land above that quantile, so it never
rises, and every dip of it by noise or drift is kept (on a stationary stream learning took the false-alarm rate
from 0.18 % to 0.27 %; on a mode whose later data is a little wider, from 14 % to 21 %, worse than never
updating). So each mode's tail as the fit measured it on held-out records is kept as its anchor (`pin`), and a
p-value is the larger of the live tail's and the anchor's: learning may widen a mode's tail, never narrow it
below what the fit measured. A short warm-up's fit is not anchored (its experts keep maturing online and its
calibration must follow them down: model/fitting.py), nor is a grown expert (it settles: novelty/settling.py).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from streammoe.model.grouped import ranks_by_row

TAIL_FRACTION = 0.05
TAIL_INNER = 0.01
MIN_TAIL_SCALE = 1e-2
MIN_MODE_SCORES = 64


def sorted_rows(x: Tensor) -> Tensor:
    """Each row of `x` in ascending order (NaN last), as `x.sort(dim=1).values`. On the CPU numpy's sort does it:
    torch's took ~1.2 ms for the (K+1) x 2048 buffers at K=8, numpy's ~0.07 ms, and the buffers are re-sorted
    after every learned batch, a fifth of a small batch's `score_many`. The values are the same (equal scores
    in either order)."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(np.sort(x.numpy(), axis=1))
    return x.sort(dim=1).values


def unanchored(rows: int) -> Tensor:
    """Anchors for `rows` buffers that have none (tail start +inf, scale 1)."""
    return torch.tensor([[math.inf, 1.0]], dtype=torch.float32).repeat(rows, 1)


class ModeCalibration(nn.Module):
    scores: torch.Tensor
    count: torch.Tensor
    anchor: torch.Tensor

    def __init__(self, k_max: int, size: int = 2048) -> None:
        super().__init__()
        self.k_max, self.size = k_max, size
        # Row k_max is the pooled buffer.
        self.register_buffer("scores", torch.zeros(k_max + 1, size, dtype=torch.float32))
        self.register_buffer("count", torch.zeros(k_max + 1, dtype=torch.int64))
        # Per buffer: the fit's tail start and scale; a start of +inf is no anchor.
        self.register_buffer("anchor", unanchored(k_max + 1))
        self._sorted: Tensor | None = None

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._sorted = None

    @torch.no_grad()
    def reset_mode(self, k: int) -> None:
        self.count[k] = 0
        self.anchor[k] = unanchored(1)[0].to(self.anchor.device)
        self._sorted = None

    @torch.no_grad()
    def pin(self) -> None:
        """Keep every calibrated buffer's tail as it is now as its anchor (after the fit's calibration)."""
        _, n, q, scale = self._tables()
        on = n > 0
        self.anchor[on] = torch.stack([q, scale], dim=1)[on].to(self.anchor.dtype)
        self._sorted = None

    @torch.no_grad()
    def update(self, modes: Tensor, scores: Tensor) -> None:
        """Append `scores` to the ring buffer of each record's mode and to the pooled buffer."""
        if scores.numel() == 0:
            return
        scores = scores.to(self.scores.dtype)
        self._append(torch.cat([modes, torch.full_like(modes, self.k_max)]), torch.cat([scores, scores]))
        self._sorted = None

    @torch.no_grad()
    def replace(self, k: int, positions: Tensor, values: Tensor) -> None:
        """Overwrite entries of mode k's buffer in place (the lock-in breaker re-measures its clipped tail)."""
        self.scores[k, positions] = values.to(self.scores.dtype)
        self._sorted = None

    def _append(self, rows: Tensor, values: Tensor) -> None:
        """Write each value into its row's ring buffer, in order, all rows in one pass (no loop over modes).

        Within a row the i-th value goes to slot (count + i) % size; of a row with more values than slots only
        the last `size` are written, so no slot is written twice (which one of two writes wins is undefined on a
        GPU)."""
        order, counts, rank = ranks_by_row(rows, self.k_max + 1)
        rows, values = rows[order], values[order]
        keep = rank >= counts[rows] - self.size
        self.scores[rows[keep], (self.count[rows[keep]] + rank[keep]) % self.size] = values[keep]
        self.count += counts

    def _tables(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per buffer: sorted scores (unfilled slots at +inf), reference count, tail start, tail scale."""
        if self._sorted is None:
            n = self.count.clamp(max=self.size)
            idx = torch.arange(self.size, device=self.scores.device)
            filled = idx[None, :] < n[:, None]
            ref = sorted_rows(torch.where(filled, self.scores, torch.full_like(self.scores, float("inf"))))
            nf = n.to(ref.dtype)

            def quantile(upper: float) -> Tensor:
                i = (nf * (1.0 - upper)).floor().long().clamp(min=0, max=self.size - 1)
                i = torch.minimum(i, (n - 1).clamp(min=0))
                return ref.gather(1, i[:, None]).squeeze(1)

            q_start, q_inner = quantile(TAIL_FRACTION), quantile(TAIL_INNER)
            # Exponential tail: P(> q_start) = TAIL_FRACTION and P(> q_inner) = TAIL_INNER fix its scale from two
            # quantiles, so nothing above q_inner (where clipped scores of flagged records sit) enters the fit.
            scale = ((q_inner - q_start) / math.log(TAIL_FRACTION / TAIL_INNER)).clamp(min=MIN_TAIL_SCALE)
            self._sorted = ref
            self._stats = (nf, torch.where(n > 0, q_start, torch.zeros_like(q_start)), scale)
        return (self._sorted, *self._stats)

    @torch.no_grad()
    def score_at(self, modes: Tensor, log_p: float) -> Tensor:
        """The score whose p-value is exp(log_p) in each record's mode (inverse of the tail model)."""
        _, _n_all, q_all, scale_all = self._tables()
        rows = self.rows_for(modes)
        live = q_all[rows] + scale_all[rows] * (math.log(TAIL_FRACTION) - log_p)
        qa, sa = self.anchor[rows, 0], self.anchor[rows, 1]
        fixed = qa + sa * (math.log(TAIL_FRACTION) - log_p)
        return torch.where(torch.isfinite(qa), torch.maximum(live, fixed), live)

    def n_reference(self) -> Tensor:
        return self.count.clamp(max=self.size)

    def rows_for(self, modes: Tensor) -> Tensor:
        """The buffer each record is judged against: its mode's, or the pooled one while the mode is young."""
        n = self.n_reference()
        return torch.where(n[modes] >= MIN_MODE_SCORES, modes, torch.full_like(modes, self.k_max))

    @torch.no_grad()
    def log_p_value(self, modes: Tensor, scores: Tensor) -> Tensor:
        """log P(score' >= score) under the null of the record's mode; 0 (p = 1) where nothing is calibrated.

        Kept in log space so that far tails never underflow to p = 0 and still order records by severity.
        """
        ref, n_all, q_all, scale_all = self._tables()
        rows = self.rows_for(modes)
        scores = scores.to(ref.dtype)
        # One batched binary search of every record against every buffer, then pick each record's buffer:
        # (K+1) x B searches beat materialising a (B, size) copy of the references.
        n_below_all = torch.searchsorted(ref, scores.unsqueeze(0).expand(ref.shape[0], -1).contiguous())
        n_below = n_below_all.gather(0, rows.unsqueeze(0)).squeeze(0).to(ref.dtype)
        n, q, scale = n_all[rows], q_all[rows], scale_all[rows]
        n_below = torch.minimum(n_below, n)
        log_empirical = torch.log((n - n_below + 1.0) / (n + 1.0))
        log_tail = math.log(TAIL_FRACTION) - (scores - q) / scale
        # Past the tail start only the tail model speaks: the buffer's top holds clipped scores (a spike at the
        # learning threshold), and an empirical count through that spike would make p fall off a cliff.
        log_p = torch.where(scores > q, log_tail, log_empirical)
        qa, sa = self.anchor[rows, 0], self.anchor[rows, 1]
        anchored = torch.clamp(math.log(TAIL_FRACTION) - (scores - qa) / sa, max=math.log(TAIL_FRACTION))
        log_p = torch.where(torch.isfinite(qa), torch.maximum(log_p, anchored), log_p)
        log_p = torch.where(torch.isnan(scores), torch.full_like(log_p, -torch.inf), log_p)
        return torch.where(n > 0, log_p, torch.zeros_like(log_p))
