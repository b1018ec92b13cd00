"""A small reservoir of normal records per expert, replayed in every learning step.

Without it an expert whose mode has not been seen for a while drifts towards whatever the other experts'
records pull it to (catastrophic forgetting); reservoir sampling keeps a uniform sample of the mode's history.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from streammoe.model.grouped import last_writes, ranks_by_row


class ReplayReservoir(nn.Module):
    records: torch.Tensor
    seen: torch.Tensor

    def __init__(self, k_max: int, n_channels: int, size: int = 512) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("records", torch.zeros(k_max, size, n_channels, dtype=torch.float32))
        self.register_buffer("seen", torch.zeros(k_max, dtype=torch.int64))

    @torch.no_grad()
    def reset_mode(self, k: int) -> None:
        self.seen[k] = 0

    @torch.no_grad()
    def add(self, modes: Tensor, x: Tensor, generator: torch.Generator | None = None) -> None:
        """Reservoir-sample the records `x` into the reservoirs of their `modes` (Vitter's algorithm R).

        All modes in one pass: records are taken mode by mode (ascending) in arrival order, which draws the same
        random numbers as a loop over the modes would. Algorithm R lets a later record overwrite an earlier one
        of the same batch: only the last write to each slot is made."""
        order, counts, rank = ranks_by_row(modes, self.seen.numel())
        modes, x = modes[order], x[order]
        seq = self.seen[modes] + rank
        slot = torch.where(
            seq < self.size,
            seq,
            (torch.rand(seq.shape, generator=generator, device=x.device) * (seq + 1).to(torch.float32)).long(),
        )
        keep = slot < self.size
        modes, slot, x = modes[keep], slot[keep], x[keep]
        final = last_writes(modes * self.size + slot, self.seen.numel() * self.size)
        self.records[modes[final], slot[final]] = x[final].to(self.records.dtype)
        self.seen += counts

    @torch.no_grad()
    def sample(self, active: Tensor, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """About `n` records spread evenly over the active experts that have any, with their expert ids."""
        filled = torch.clamp(self.seen, max=self.size)
        experts = torch.nonzero(active & (filled > 0)).flatten()
        if experts.numel() == 0 or n <= 0:
            return self.records.new_zeros((0, self.records.shape[2])), self.seen.new_zeros(0)
        per = max(1, n // experts.numel())
        ids = experts.repeat_interleave(per)
        pos = (torch.rand(ids.shape, generator=generator, device=ids.device) * filled[ids]).long()
        return self.records[ids, pos], ids

    def from_mode(self, k: int) -> Tensor:
        return self.records[k, : int(torch.clamp(self.seen[k], max=self.size))]
