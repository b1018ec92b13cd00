"""Scoring one micro-batch: the mixture's evaluation turned into calibrated decisions, brought to the host.

Kept apart from the detector, which only stages the records and keeps the counts; nothing here learns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from streammoe.model.cascade import cascade_evaluate
from streammoe.model.config import ModelConfig
from streammoe.model.mixture import STATUS_FAULT, Evaluation, MixtureOfVAEs
from streammoe.model.partial import partial_log_p
from streammoe.model.poison import PhysicalLimits

LOG10 = math.log(10.0)


@dataclass
class ScoredBatch:
    """Per-record results of `score_many` as numpy arrays (length B; `responsibilities` and
    `channel_share` are (B, k_max) and (B, C)). Rows whose input or likelihood was not finite have `valid`
    False, mode -1; rows with a sentinel reading or one outside its physical bounds (model/poison.py) have
    `in_range` False. Both always alert and never teach the model. Rows with missing dimensions (`missing`,
    (B, C), True where a reading is absent) are scored on the dimensions present (`partial`): their likelihood is
    the marginal over those, their p-value is judged like with like (model/partial.py), and they never teach."""

    nll: np.ndarray
    log_p_value: np.ndarray
    score: np.ndarray  # -log10(p-value): calibrated, so one threshold means the same in every mode
    is_anomaly: np.ndarray
    mode: np.ndarray
    mode_entropy: np.ndarray
    epistemic: np.ndarray
    aleatoric: np.ndarray
    responsibilities: np.ndarray
    channel_share: np.ndarray
    valid: np.ndarray
    in_range: np.ndarray
    threshold: float
    missing: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool))
    evaluation: Evaluation | None = field(default=None, repr=False)
    usable_rows: torch.Tensor | None = field(default=None, repr=False)  # valid and in range: may teach the model
    refs: torch.Tensor | None = field(default=None, repr=False)
    timestamps: torch.Tensor | None = field(default=None, repr=False)
    # With a context (context/inputs.py): the experts' inputs' names (channels, then features such as `d(flow)`)
    # and each input's share (B, C + F*C); `channel_share` then sums each channel's inputs.
    input_names: list[str] | None = field(default=None, repr=False)
    input_share: np.ndarray | None = field(default=None, repr=False)
    # With the cascade (model/cascade.py): rows that got the full S-sample pass (the others carry the first
    # pass's results), and the first pass's NLL of every row. None: every row got the full pass.
    rescored: torch.Tensor | None = field(default=None, repr=False)
    first_nll: torch.Tensor | None = field(default=None, repr=False)
    # Per record, by how many of its expert's predicted standard deviations its worst channel misses what the
    # expert reconstructs (the square root of the largest channel misfit; +inf when not finite): a spike on a
    # channel is tens of them out, an odd but plausible record a few (incidents.opens_at_once reads it).
    deviation: np.ndarray | None = None
    # (B, C) the readings that make a row out of range (model/poison.py): `top_channels` names them first, as the
    # misfit of a record with a saturated reading can land on its other channels. None: no such row.
    poisoned: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.score)

    def names(self, channels: list[str]) -> list[str]:
        """What `top_channels` indexes: the channels, or with a context every input's name."""
        return channels if self.input_names is None else self.input_names

    @property
    def p_value(self) -> np.ndarray:
        return np.exp(self.log_p_value)

    @property
    def partial(self) -> np.ndarray:
        """(B,) rows scored with at least one dimension missing."""
        if self.missing.shape[0] != len(self):
            return np.zeros(len(self), bool)
        return np.asarray(self.missing.any(axis=1))

    def censored(self, nll: torch.Tensor) -> torch.Tensor:
        """`nll` as the calibration takes it: full-pass scores only, rows the cascade cleared censored (-inf,
        known to lie under its margin)."""
        return nll if self.rescored is None else torch.where(self.rescored, nll, torch.full_like(nll, -math.inf))

    def drift_nll(self, nll: torch.Tensor) -> torch.Tensor:
        """One estimate for every record for the drift detector: the first pass's under the cascade."""
        return nll if self.first_nll is None else self.first_nll

    def top_channels(self, i: int, n: int = 3) -> list[tuple[int, float]]:
        """The `n` inputs with the largest share of record i's misfit, as (index into `names(channels)`, share):
        a channel's value, or with a context one of its features."""
        share = (self.channel_share if self.input_share is None else self.input_share)[i]
        if self.poisoned is None or not self.poisoned[i].any():
            order = np.argsort(-share)[:n]
        else:  # the out-of-range readings first (a channel's value comes before its features in the inputs)
            first = np.zeros(len(share), bool)
            first[: self.poisoned.shape[1]] = self.poisoned[i]
            order = np.lexsort((-share, ~first))[:n]
        return [(int(c), float(share[c])) for c in order]


def to_host(device: torch.device, *tensors: torch.Tensor) -> list[np.ndarray]:
    """Device tensors as numpy arrays: on a GPU, every copy into page-locked memory is queued first and the
    stream is synchronised once per batch, not once per array."""
    if device.type == "cpu":
        return [t.numpy() for t in tensors]
    host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tensors]
    for h, t in zip(host, tensors):
        h.copy_(t, non_blocking=True)
    torch.cuda.current_stream(device).synchronize()
    return [h.numpy() for h in host]


@torch.inference_mode()
def score_records(
    model: MixtureOfVAEs,
    config: ModelConfig,
    limits: PhysicalLimits,
    xt: torch.Tensor,
    generator: torch.Generator,
    counters: dict[str, int],
    missing: torch.Tensor | None = None,
    cascade: bool = True,
) -> ScoredBatch:
    """Score records `xt` (B, C), already on the model's device; adds to `counters` (records_scored,
    non_finite, out_of_range, partial). Non-finite rows are zeroed before the model sees them and always alert.
    With `cascade` and `config.cascade.enabled`, only the records a first pass cannot clear get the full pass
    (model/cascade.py; partial rows always do).

    `missing` (B, C) bool marks input dimensions without a reading (their values are ignored): such a row is
    scored on the dimensions present; a row with none present is not finite."""
    b = xt.shape[0]
    start = counters["records_scored"]
    observed = None if missing is None or not bool(missing.any()) else ~missing
    if observed is not None:
        xt = torch.where(observed, xt, torch.zeros_like(xt))
    valid = torch.isfinite(xt).all(dim=1)
    if observed is not None:
        valid &= observed.any(dim=1)
    xt = torch.where(valid[:, None], xt, torch.zeros_like(xt))
    poisoned = limits.poisoned_readings(xt, observed)
    in_range = ~poisoned.any(dim=1)
    rescored = first_nll = None
    if cascade and config.cascade.enabled and config.n_samples > 1:
        must = ~valid | ~in_range | (torch.zeros_like(valid) if observed is None else ~observed.all(dim=1))
        ev, rescored, first_nll = cascade_evaluate(model, xt, config.n_samples, generator, must, observed)
    else:
        ev = model.evaluate(xt, config.n_samples, generator, observed)
    finite = valid & torch.isfinite(ev.log_px)
    nll = torch.where(finite, -ev.log_px, torch.full_like(ev.log_px, math.nan))
    mode = torch.where(finite, ev.mode, torch.full_like(ev.mode, -1))
    log_p = model.calibration.log_p_value(mode.clamp(min=0), nll)
    partial = torch.zeros_like(finite) if observed is None else finite & ~observed.all(dim=1)
    if observed is not None and bool(partial.any()):
        assert missing is not None
        log_p = partial_log_p(model, config.n_samples, config.seed + start, log_p, nll, mode, missing, partial)
        counters["partial"] += int(partial.sum())
    log_p = torch.where(finite, log_p, torch.full_like(log_p, -math.inf))
    fault = model.status[mode.clamp(min=0)] == STATUS_FAULT
    is_anomaly = (log_p < math.log(config.threshold)) | (fault & finite) | ~finite | ~in_range
    share = ev.channel_nll / ev.channel_nll.sum(1, keepdim=True).clamp(min=1e-12)
    worst = torch.nan_to_num(ev.channel_nll, nan=0.0).amax(1).clamp(min=0)  # a channel not measured: no misfit
    deviation = torch.where(finite, worst.sqrt(), torch.full_like(nll, math.inf))
    counters["records_scored"] += b
    host = to_host(
        xt.device,
        *(nll, log_p, -log_p / LOG10, is_anomaly, mode, ev.entropy, ev.epistemic, ev.aleatoric, ev.resp, share),
        *(finite, in_range, deviation, valid, poisoned),
    )
    nll_h, log_p_h, score_h, anomaly_h, mode_h, entropy_h, epi_h, ale_h, resp_h, share_h, finite_h, range_h, dev_h = (
        host[:13]
    )
    # Counted on the host copies: one device synchronisation per batch (to_host's), not one per count.
    counters["non_finite"] += int(np.count_nonzero(host[13] & ~finite_h))
    counters["out_of_range"] += int(np.count_nonzero(finite_h & ~range_h))
    return ScoredBatch(
        *(nll_h, log_p_h, score_h, anomaly_h, mode_h, entropy_h, epi_h, ale_h, resp_h, share_h, finite_h, range_h),
        threshold=config.threshold,
        missing=np.zeros((b, xt.shape[1]), bool) if missing is None else missing.cpu().numpy(),
        evaluation=ev,
        usable_rows=finite & in_range & ~partial,
        deviation=dev_h,
        rescored=rescored,
        first_nll=first_nll,
        poisoned=host[14] if not range_h.all() else None,
    )
