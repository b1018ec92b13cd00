"""Sparse M-step: each record's ELBO gradient goes only to the experts whose responsibility for it is at least
`ModelConfig.learn_min_resp`, so a step costs about the (record, expert) pairs that matter, not records x K.

Each expert's kept records are gathered into one padded batch (K', m, C), with m the most any expert keeps, and
all of them run in the experts' batched pass as before; padding rows weigh zero. With one dominant mode a step
costs about one expert's; with records spread evenly over K modes about 1/K of the dense step."""

from __future__ import annotations

import torch
from torch import Tensor

from streammoe.model.experts import StackedVAE


def sparse_loss(
    experts: StackedVAE, x: Tensor, r: Tensor, idx: Tensor, min_resp: float, generator: torch.Generator | None
) -> Tensor:
    """-sum of r_ik ELBO_k(x_i) over the pairs with r_ik >= min_resp, divided by the records N; `r` (Ka, N) are
    the responsibilities of the active experts `idx`. min_resp 0 keeps every pair: the dense loss, on the same
    noise."""
    keep = r >= min_resp
    counts = keep.sum(1)
    ks = torch.nonzero(counts > 0).flatten()
    if ks.numel() == 0:
        return r.sum() * 0.0
    m = int(counts.max())
    # Per expert, its kept records first (in arrival order), then others as padding.
    order = torch.argsort((~keep[ks]).to(torch.int8), dim=1, stable=True)[:, :m]
    weight = r[ks].gather(1, order) * (torch.arange(m, device=x.device)[None, :] < counts[ks][:, None])
    elbo = experts.elbo(x[order], idx[ks], generator)  # (K', m)
    return -(weight * elbo).sum() / x.shape[0]
