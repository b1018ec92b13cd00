"""Mixture weights: q(pi) = Dirichlet(alpha0 + gamma), with gamma a decayed sum of responsibilities."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class DirichletWeights(nn.Module):
    """Streaming variational posterior over the mixture weights.

    gamma is a sum of responsibilities that decays with a half-life counted in records, so the weights follow
    the machine's mix of operating modes as it changes; its stationary total is `half_life / ln 2` records.
    """

    gamma: torch.Tensor

    def __init__(self, k_max: int, alpha0: float = 1.0, half_life: float = 20_000.0) -> None:
        super().__init__()
        self.alpha0 = float(alpha0)
        self.half_life = float(half_life)
        self.register_buffer("gamma", torch.zeros(k_max, dtype=torch.float64))

    @property
    def effective_count(self) -> float:
        """The total mass gamma converges to under a constant stream."""
        return self.half_life / math.log(2.0)

    def alpha(self, active: Tensor) -> Tensor:
        return torch.where(active, self.alpha0 + self.gamma, torch.zeros_like(self.gamma))

    def expected_log_pi(self, active: Tensor) -> Tensor:
        """E_q[log pi_k] = psi(alpha_k) - psi(sum_j alpha_j) over active experts; -inf elsewhere."""
        a = self.alpha(active)
        out = torch.digamma(a.clamp(min=1e-30)) - torch.digamma(a.sum())
        return torch.where(active, out, torch.full_like(out, -math.inf))

    def mean(self, active: Tensor) -> Tensor:
        """E_q[pi]: the weights an operator sees."""
        a = self.alpha(active)
        return a / a.sum()

    @torch.no_grad()
    def update(self, resp_sum: Tensor, n_records: int) -> None:
        """Decay by the records seen, then add this batch's responsibilities (M-step for q(pi))."""
        if n_records <= 0:
            return
        self.gamma.mul_(0.5 ** (n_records / self.half_life)).add_(resp_sum.to(self.gamma.dtype))
