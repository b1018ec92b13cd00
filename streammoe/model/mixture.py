"""The mixture of VAEs as one torch module: experts, weights, scaler, calibration and replay together.

Everything the model has learned lives in this module's state_dict, so a checkpoint is one state_dict plus the
config that shaped it, and the whole state of one model scope can move between workers as a unit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from streammoe.model.calibration import ModeCalibration
from streammoe.model.config import ModelConfig
from streammoe.model.experts import StackedVAE, importance_from_eps, linear_blame
from streammoe.model.memory import ShortTermMemory
from streammoe.model.replay import ReplayReservoir
from streammoe.model.scaler import RunningScaler
from streammoe.model.weights import DirichletWeights

# Elements of one (K, S, rows, C) intermediate per E-step pass on a GPU: 256 MB in float32, a few GB for the
# whole pass, so it fits beside the model on small cards too.
CUDA_CHUNK_ELEMENTS = 2**26

# Operator verdicts on an expert (see the control topic): a fault mode alerts on every record assigned to it.
STATUS_LEARNED, STATUS_CONFIRMED, STATUS_FAULT = 0, 1, 2


@dataclass
class Evaluation:
    """The E-step and uncertainty breakdown for a batch, on the model's device (length B unless noted)."""

    x: Tensor  # (B, C) raw input (finite)
    log_px: Tensor  # mixture log-likelihood (IWAE estimate)
    log_pk: Tensor  # (k_max, B) per-expert log-likelihood, -inf for inactive slots
    resp: Tensor  # (B, k_max) responsibilities, zero for inactive slots
    mode: Tensor  # argmax responsibility (slot index)
    entropy: Tensor  # of the responsibilities, nats
    epistemic: Tensor  # mean over channels of the spread of decoder means over experts and samples
    aleatoric: Tensor  # mean over channels of the expected decoder variance
    channel_nll: Tensor  # (B, C) standardised squared residual per channel under the assigned expert


class MixtureOfVAEs(nn.Module):
    status: torch.Tensor
    below_floor: torch.Tensor
    since_merge: torch.Tensor
    born: torch.Tensor

    def __init__(self, n_channels: int, config: ModelConfig, n_values: int | None = None) -> None:
        """`n_channels` inputs per record, the first `n_values` (default: all) decoded, the rest linear."""
        super().__init__()
        self.config = config
        self.n_channels = n_channels
        k = config.k_max
        self.experts = StackedVAE(k, n_channels, config.hidden, config.latent, n_values)
        self.weights = DirichletWeights(k, config.alpha0, config.half_life)
        self.scaler = RunningScaler(n_channels)
        self.calibration = ModeCalibration(k, config.calibration_size)
        self.replay = ReplayReservoir(k, n_channels, config.replay_size)
        self.register_buffer("status", torch.zeros(k, dtype=torch.int8))
        self.memory = ShortTermMemory(n_channels, config.novelty, k)
        self.register_buffer("below_floor", torch.zeros(k, dtype=torch.int64))
        self.register_buffer("since_merge", torch.zeros((), dtype=torch.int64))
        # Stream position (records seen by the memory) at which each expert was added; fitted experts: 0.
        self.register_buffer("born", torch.full((k,), -(2**40), dtype=torch.int64))
        # How to run the E-step, not what was learned (not in the state_dict): see MixtureDetector.accelerate.
        self.use_compiled = False
        self.autocast_dtype: torch.dtype | None = None

    @property
    def active(self) -> Tensor:
        return self.experts.active

    @property
    def n_active(self) -> int:
        return int(self.active.sum())

    def chunk_rows(self, n_active: int | None = None, n_samples: int | None = None) -> int:
        """Rows per pass: bounds the (K, S, rows, C) intermediates, which dominate time at large batches.

        On a CPU they stay near 8192 x C floats, cache-sized (2-8x larger chunks scored slower at K=8, S=8; see
        BENCHMARKS.md). On a GPU every pass costs a hundred kernel launches whatever its size, so a pass takes as
        many rows as keep each such tensor within CUDA_CHUNK_ELEMENTS: a 65,536-row batch at K=16, S=8, 38
        channels in 5 passes instead of 1024."""
        k = self.n_active if n_active is None else n_active
        per_row = max(1, k * (self.config.n_samples if n_samples is None else n_samples))
        if self.experts.enc_w1.device.type == "cuda":
            return max(32, CUDA_CHUNK_ELEMENTS // (per_row * self.n_channels))
        return max(32, 8192 // per_row)

    @torch.no_grad()
    def draw_noise(self, x: Tensor, n_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """The noise `evaluate(x, n_samples, generator)` would draw, (K_active, S, B, Z): chunk by chunk in the
        same shapes, so the generator advances the same and row i gets the same noise (model/cascade.py
        rescores a subset of rows with exactly the full pass's noise)."""
        ka = self.n_active
        rows = self.chunk_rows(ka, n_samples)
        return torch.cat([self.experts.draw_eps(ka, n_samples, c, generator) for c in x.split(rows)], dim=2)

    @torch.no_grad()
    def evaluate(
        self,
        x: Tensor,
        n_samples: int,
        generator: torch.Generator | None = None,
        observed: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> Evaluation:
        """Batched E-step over all active experts, chunked over rows, on raw finite records (each expert
        standardises them its own way; likelihoods are on the original scale).

        `observed` (B, C) bool, False for missing input dimensions (their values are ignored): every likelihood is
        then the marginal over the observed dimensions (experts.importance_from_eps), and the breakdown averages
        over them. None (every dimension observed) runs the full pass unchanged.

        The noise is drawn here, chunk by chunk, so the random stream is the same whether or not the statistics
        run compiled (`use_compiled`) or under autocast (`autocast_dtype`, CUDA: float16/bfloat16). `noise`
        (K_active, S, B, Z) replaces the draw (S is then its second dimension): a slice of `draw_noise` gives
        some of its rows their full-pass samples (model/cascade.py)."""
        if noise is not None:
            n_samples = noise.shape[1]
        idx = torch.nonzero(self.active).flatten()
        if idx.numel() == 0:
            raise RuntimeError("the mixture has no active expert: fit it or warm it up first")
        elog_pi = self.weights.expected_log_pi(self.active)[idx].to(x.dtype)
        log_pibar = torch.log(self.weights.mean(self.active)[idx]).to(x.dtype)
        w = self.experts._weights(idx)
        # The breakdown's unit: the global scaler's spread per channel (the raw unit before any fit), the same
        # for every expert.
        fitted = bool(self.scaler.count > 0)
        ref_std = self.scaler.std.to(x.dtype) if fitted else torch.ones_like(w["scale"][0, 0])
        ref_mean = self.scaler.mean.to(x.dtype) if fitted else torch.zeros_like(ref_std)
        w["ref_a"] = w["scale"] / ref_std
        w["ref_b"] = (w["loc"] - ref_mean) / ref_std
        stats = self._statistics()
        parts = []
        rows = self.chunk_rows(idx.numel(), n_samples)
        masks = [None] * len(x.split(rows)) if observed is None else observed.to(x.dtype).split(rows)
        given = [None] * len(masks) if noise is None else noise.split(rows, dim=2)
        for chunk, mask, eps in zip(x.split(rows), masks, given):
            if eps is None:
                eps = self.experts.draw_eps(idx.numel(), n_samples, chunk, generator)
            if self.autocast_dtype is not None:
                with torch.autocast(chunk.device.type, dtype=self.autocast_dtype):
                    out = stats(chunk, eps, w, elog_pi, log_pibar, mask)
                out = tuple(t.float() if t.is_floating_point() else t for t in out)
            else:
                out = stats(chunk, eps, w, elog_pi, log_pibar, mask)
            parts.append(out)
        cat = [torch.cat(p, dim=-1 if i in (1, 2) else 0) for i, p in enumerate(zip(*parts))]
        log_px, log_pk_a, resp_a, entropy, epistemic, aleatoric, channel_nll, mode_a = cat
        k_max, b = self.config.k_max, x.shape[0]
        log_pk = torch.full((k_max, b), -math.inf, dtype=x.dtype, device=x.device)
        log_pk[idx] = log_pk_a
        resp = torch.zeros((b, k_max), dtype=x.dtype, device=x.device)
        resp[:, idx] = resp_a.T
        return Evaluation(
            x=x,
            log_px=log_px,
            log_pk=log_pk,
            resp=resp,
            mode=idx[mode_a],
            entropy=entropy,
            epistemic=epistemic,
            aleatoric=aleatoric,
            channel_nll=channel_nll,
        )

    def _statistics(self) -> Callable[..., tuple[Tensor, ...]]:
        if not self.use_compiled:
            return chunk_statistics
        global _COMPILED
        if _COMPILED is None:
            _COMPILED = torch.compile(chunk_statistics, dynamic=True)
        return _COMPILED


_COMPILED: Callable[..., tuple[Tensor, ...]] | None = (
    None  # one compiled chunk_statistics per process, shared by every model
)


def chunk_statistics(
    x: Tensor,
    eps: Tensor,
    w: dict[str, Tensor],
    elog_pi: Tensor,
    log_pibar: Tensor,
    observed: Tensor | None = None,
) -> tuple[Tensor, ...]:
    """E-step and uncertainty breakdown of one chunk for the selected experts (a pure function: compilable).
    `observed` (B, C) float, 0 for missing dimensions: likelihoods marginalised, channel means over the observed.

    Returns log_px (B,), log_pk (Ka, B), resp (Ka, B), entropy, epistemic, aleatoric (B,), channel_nll (B, C),
    mode (B,) as an index into the selected experts. Inference only: the big intermediates are reused in place."""
    s = importance_from_eps(x, eps, w, observed, inplace=True)
    n_samples = eps.shape[1]
    log_pk = torch.logsumexp(s.log_w, dim=1) - math.log(n_samples)  # (Ka, B)
    resp = torch.softmax(log_pk + elog_pi[:, None], dim=0)
    log_px = torch.logsumexp(log_pk + log_pibar[:, None], dim=0)
    entropy = (-(resp * torch.log(resp.clamp(min=1e-30))).sum(0)).clamp(min=0) + 0.0
    # Law of total variance over (expert, sample) with posterior weights rho = r_k * w_ks:
    # Var[x] = E[sigma^2] (aleatoric: the decoders' own noise) + Var[mu] (epistemic: disagreement).
    # Both are averaged over channels, so the channel mean is taken before weighting where it can be. Each
    # expert's means and variances are first put into one unit (the global scaler's, `ref_a`/`ref_b`).
    # With a linear part (experts.py) the breakdown is over the decoded inputs (the record's values) only.
    rho = resp[:, None, :] * torch.softmax(s.log_w, dim=1)  # (Ka, S, B)
    a, b0 = w["ref_a"].unsqueeze(1), w["ref_b"].unsqueeze(1)  # (Ka, 1, 1, C)
    v, full = s.mean.shape[-1], observed
    if s.z is not None:
        a, b0, observed = a[..., :v], b0[..., :v], None if observed is None else observed[:, :v]
    mean = (a * s.mean).add_(b0)
    mu_bar = (rho.unsqueeze(-1) * mean).sum((0, 1))  # (B, C)
    var = s.logvar.exp_()  # the decoders' variances, in place of their log-variances (not needed after this)
    # a^2 * var, in place where that keeps var's dtype (under autocast var may be bfloat16: promoted as before)
    a2 = a.square()
    scaled = var.mul_(a2) if var.dtype == a2.dtype else a2 * var
    if observed is None:
        second = (rho * mean.square_().mean(-1)).sum((0, 1))
        aleatoric = (rho * scaled.mean(-1)).sum((0, 1))
        epistemic = (second - mu_bar.square().mean(1)).clamp(min=0)
    else:
        share = observed / observed.sum(-1, keepdim=True).clamp(min=1.0)  # (B, C): a mean over observed channels
        second = (rho * mean.square_().mul_(share).sum(-1)).sum((0, 1))
        aleatoric = (rho * scaled.mul_(share).sum(-1)).sum((0, 1))
        epistemic = (second - (mu_bar.square() * share).sum(1)).clamp(min=0)
    # Channel blame under the assigned expert: its importance-weighted squared standardised residual.
    mode = resp.argmax(0)
    rows = torch.arange(x.shape[0], device=x.device)
    w_sel = torch.softmax(s.log_w[mode, :, rows], dim=1)  # (B, S)
    sq = s.sq_resid[mode, :, rows]
    if s.z is not None:
        sq = torch.cat([sq, linear_blame(s, w, mode, full)], dim=-1)
    channel_nll = (w_sel.unsqueeze(-1) * sq).sum(1)
    return log_px, log_pk, resp, entropy, epistemic, aleatoric, channel_nll, mode
