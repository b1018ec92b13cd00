"""Per-mode buffers written in one pass: each value's rank among its row's values in arrival order, and which
of several writes to one slot is the last, so ring buffers and reservoirs update without a loop over modes."""

from __future__ import annotations

import torch
from torch import Tensor


def ranks_by_row(rows: Tensor, n_rows: int) -> tuple[Tensor, Tensor, Tensor]:
    """(order, counts, rank): the stable sort of `rows` (arrival order kept within a row), values per row, and
    each sorted value's rank within its row."""
    order = torch.argsort(rows, stable=True)
    counts = torch.bincount(rows, minlength=n_rows)
    rank = torch.arange(rows.numel(), device=rows.device) - (torch.cumsum(counts, 0) - counts)[rows[order]]
    return order, counts, rank


def last_writes(slot: Tensor, size: int) -> Tensor:
    """Which of `slot`'s writes is the last to its slot (bool, like `slot`). An indexed write with repeated slots
    keeps the last on a CPU but an arbitrary one on a GPU, so callers make only these."""
    order = torch.arange(slot.numel(), device=slot.device)
    last = torch.full((size,), -1, dtype=order.dtype, device=slot.device).scatter_reduce_(0, slot, order, reduce="amax")
    return last[slot] == order
