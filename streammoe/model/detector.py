"""The numpy-facing detector: `fit`, `score_many`, `learn_many` over the torch mixture.

Prequential use, as in the daemon and `streammoe score`::

    scored = detector.score_many(batch)   # decisions for these records, from what was learned before them
    detector.learn_many(scored)           # then learn from the records judged normal
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from streammoe.context.holdout import block_split
from streammoe.context.inputs import ContextInputs
from streammoe.model.config import ModelConfig
from streammoe.model.fitting import HOLDOUT_FRACTION, MIN_ROWS_FOR_HOLDOUT, FitReport, fit_mixture
from streammoe.model.learning import ExpertLearner, StepCadence, replay_step
from streammoe.model.mixture import (
    STATUS_CONFIRMED,
    STATUS_FAULT,
    STATUS_LEARNED,
    MixtureOfVAEs,
)
from streammoe.model.poison import PhysicalLimits
from streammoe.model.scoring import ScoredBatch, score_records
from streammoe.novelty.drift import LikelihoodDrift
from streammoe.novelty.events import ModeEvent
from streammoe.novelty.growth import try_grow
from streammoe.novelty.lifecycle import merge_duplicates, retire_idle
from streammoe.novelty.lockin import try_unlock
from streammoe.novelty.settling import settling

STATUSES = {"learned": STATUS_LEARNED, "confirmed": STATUS_CONFIRMED, "fault": STATUS_FAULT}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class LearnReport:
    learned: int = 0
    skipped_step: str = ""
    events: list[ModeEvent] = field(default_factory=list)
    candidate: str = ""  # why a candidate expert was rejected, if one was tried
    drift: bool = False  # river ADWIN saw the stream's typical log-likelihood change at this batch
    stepped: bool = False  # the experts' gradient step ran (not on batches amortised: learning.StepCadence)
    unlocked: list[int] = field(default_factory=list)  # experts whose lock-in was broken (novelty/lockin.py)
    lockin: str = ""  # why a lock-in test was rejected, if one was tried


class RecordLimits(PhysicalLimits):
    """The poison rules applied to a record's own values only: a context feature (a change of exactly 0, say)
    is never a sentinel."""

    def __init__(self, config: ModelConfig, channels: Sequence[str]) -> None:
        super().__init__(config.poison, channels)
        self.n = len(channels)

    def poisoned(self, x: torch.Tensor, observed: torch.Tensor | None = None) -> torch.Tensor:
        return super().poisoned(x[:, : self.n], None if observed is None else observed[:, : self.n])


@torch.no_grad()
def calibrate_capped(model: MixtureOfVAEs, modes: torch.Tensor, nll: torch.Tensor) -> None:
    """Teach the per-mode calibration these records' scores, those past the clip p-value's score (the learn
    threshold's by default; `clip_threshold`'s when set) capped at the learn threshold's score, so one outlier
    cannot stretch a mode's tail; a mode still settling (novelty/settling.py) takes its scores uncapped."""
    cfg = model.config
    cap = model.calibration.score_at(modes, math.log(cfg.learn_threshold))
    if cfg.clip_threshold is not None:  # records between the two thresholds are measured as they are
        past = nll > model.calibration.score_at(modes, math.log(cfg.clip_threshold))
        cap = torch.where(past, cap, torch.full_like(cap, math.inf))
    if cfg.novelty.enabled and cfg.novelty.settle_records > 0:
        cap = torch.where(settling(model)[modes], torch.full_like(cap, math.inf), cap)
    model.calibration.update(modes, torch.minimum(nll, cap))


def fill_partial(inputs: torch.Tensor, model: MixtureOfVAEs, n_channels: int) -> torch.Tensor:
    """Context features a record's past does not define (NaN) take the fit's mean of that feature, the most
    typical value, so a record right after a gap is judged on its values and defined features alone, not
    flagged for its missing past. The features of a channel missing from the record itself are masked instead
    (`input_mask`: the likelihood leaves them out)."""
    values, features = inputs[:, :n_channels], inputs[:, n_channels:]
    fill = model.scaler.mean[n_channels:].to(inputs.dtype)[None, :]
    return torch.cat([values, torch.where(torch.isnan(features), fill, features)], dim=1)


def context_split(
    config: ModelConfig, assets: Sequence[str] | np.ndarray | None, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(held-out, training) indices into the fit's kept `rows` with a time context: blocks in each asset's time
    with a guard, so no held-out row shares a window with a training row (context/holdout.py); None without
    a context (the fit's own split)."""
    if not config.context.enabled:
        return None
    kept = rows.cpu().numpy()
    short = int(kept.sum()) < MIN_ROWS_FOR_HOLDOUT
    hold, guard = block_split(assets, len(kept), config.context.window, short, HOLDOUT_FRACTION)
    hold, guard = hold[kept], guard[kept]
    return torch.from_numpy(np.flatnonzero(hold)), torch.from_numpy(np.flatnonzero(~hold & ~guard))


def input_mask(
    missing: np.ndarray, shape: tuple[int, int], inputs: ContextInputs, device: torch.device
) -> torch.Tensor | None:
    """A caller's mask of missing channels (B, C), checked, as a mask of the experts' inputs: a missing channel's
    context features are missing with it. None when nothing is missing (told on the host, so the device never
    holds an all-False mask and the scoring pass asks it nothing)."""
    mask = np.asarray(missing, dtype=bool)
    if mask.shape != shape:
        raise ValueError(f"missing must have shape {shape}, got {mask.shape}")
    if not mask.any():
        return None
    return torch.from_numpy(mask).to(device).repeat(1, inputs.n_inputs // shape[1])


class MixtureDetector:
    """A mixture of VAEs that scores first and learns after, one micro-batch at a time."""

    def __init__(
        self,
        n_channels: int,
        config: ModelConfig | None = None,
        channels: Sequence[str] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.config = config or ModelConfig()
        self.channels = list(channels) if channels is not None else [f"c{i}" for i in range(n_channels)]
        if len(self.channels) != n_channels:
            raise ValueError(f"{len(self.channels)} channel names for {n_channels} channels")
        self.limits = RecordLimits(self.config, self.channels)
        self.device = torch.device(device) if device is not None else default_device()
        self.inputs = ContextInputs(self.config.context, self.channels, self.device)
        torch.manual_seed(self.config.seed)
        self.model = MixtureOfVAEs(self.inputs.n_inputs, self.config, self.inputs.n_decoded).to(self.device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(self.config.seed)
        self.learner = ExpertLearner(self.model, self.generator)
        self.counters = {
            "records_scored": 0,
            "records_learned": 0,
            "steps_skipped": 0,
            "non_finite": 0,
            "out_of_range": 0,
            "drifts": 0,
            "steps": 0,
            "unlocks": 0,
            "partial": 0,
        }
        self.cadence = StepCadence()
        self.drift = LikelihoodDrift()

    @property
    def n_channels(self) -> int:
        """Channels of a record; the experts see `inputs.n_inputs` values per record (the context's features too)."""
        return len(self.channels)

    @property
    def is_fitted(self) -> bool:
        return self.model.n_active > 0

    def mixture_weights(self) -> np.ndarray:
        """E[pi] per expert slot (zero for inactive slots)."""
        w = self.model.weights.mean(self.model.active)
        return torch.where(self.model.active, w, torch.zeros_like(w)).cpu().numpy()

    def _tensor(self, x: np.ndarray, staged: bool = True) -> torch.Tensor:
        """Records as a float32 tensor on the device. `staged` (every batch): through page-locked memory, so the
        copy runs asynchronously; not for a one-off fit set, whose pinned block torch's cache would keep."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_channels:
            raise ValueError(f"expected records of shape (n, {self.n_channels}), got {x.shape}")
        host = torch.from_numpy(x)
        if self.device.type == "cuda" and staged:
            host = host.pin_memory()
        return host.to(self.device, non_blocking=staged)

    def accelerate(self, compile: bool = False, precision: str = "float32") -> None:
        """How the E-step runs, not what the model learns: `compile` wraps it in torch.compile (CPU or GPU; the
        first batch of a new shape compiles, seconds); `precision` "bfloat16" or "float16" runs it under autocast
        (float16 only on a GPU). Likelihoods, p-values and decisions stay float32 after it."""
        dtypes = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if precision not in dtypes:
            raise ValueError(f"precision must be one of {sorted(dtypes)}, got {precision!r}")
        if precision == "float16" and self.device.type != "cuda":
            raise ValueError("float16 autocast needs a GPU; use bfloat16 on a CPU")
        self.model.use_compiled = compile
        self.model.autocast_dtype = dtypes[precision]

    def fit(
        self,
        x: np.ndarray,
        k: int | None = None,
        progress: Callable[[int], None] | None = None,
        *,
        assets: Sequence[str] | np.ndarray | None = None,
        times: np.ndarray | None = None,
        max_gap: float = math.inf,
    ) -> FitReport:
        """Learn the mixture from normal records (N, C) in time order; several operating modes may be present.
        Rows with a sentinel or out-of-bounds reading (model/poison.py) are left out and counted in the report,
        and so are rows whose context is partial (`assets`, `times`, `max_gap` as in `score_many`); each asset's
        context ends up holding its latest records, so scoring what follows continues from them."""
        xt = self._tensor(x, staged=False)
        if not torch.isfinite(xt).all():
            raise ValueError("fit data holds NaN or infinite values; clean or drop those rows first")
        poisoned = self.limits.poisoned(xt)
        xt, complete = self.inputs.fit_input(xt, ~poisoned, assets, times, max_gap)
        xt = xt[(rows := complete & ~poisoned)]
        if xt.shape[0] < 10:
            raise ValueError(f"need at least 10 records to fit without sentinel readings, got {xt.shape[0]}")
        split = context_split(self.config, assets, rows)
        report, self.learner = fit_mixture(self.model, xt, k, self.generator, progress, split)
        report.poisoned_rows = int(poisoned.sum())
        return report

    def expert_status(self) -> dict[int, str]:
        names = {v: k for k, v in STATUSES.items()}
        return {int(k): names[int(self.model.status[k])] for k in torch.nonzero(self.model.active).flatten()}

    def mark_expert(self, expert: int, status: str) -> None:
        """An operator's verdict on an expert: 'fault' (every record assigned to it alerts), 'confirmed' or
        'learned' (the default). Kept in the model, so it survives checkpoints."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {sorted(STATUSES)}, got {status!r}")
        if not 0 <= expert < self.config.k_max or not bool(self.model.active[expert]):
            raise ValueError(f"expert {expert} is not active (active: {sorted(self.expert_status())})")
        self.model.status[expert] = STATUSES[status]

    def score_many(
        self,
        x: np.ndarray,
        refs: np.ndarray | None = None,
        timestamps: np.ndarray | None = None,
        missing: np.ndarray | None = None,
        *,
        assets: Sequence[str] | np.ndarray | None = None,
        times: np.ndarray | None = None,
        max_gap: float = math.inf,
        update_context: bool = True,
        cascade: bool = True,
    ) -> ScoredBatch:
        """Score records (B, C) against what was learned so far; never learns (but moves the context on).

        `refs` and `timestamps` (int64, one per record; default: the running record count) are opaque to the
        model; they come back in new-mode events. With a context, `assets` name each record's asset (default:
        one), `times` its time (in the unit of `max_gap`; default: one step per record), and `update_context`
        False scores records the context already holds without adding them again. `missing` (B, C) bool marks
        channels without a reading (whatever `x` holds there): such a record is scored on the inputs present
        (its missing channels' context features are missing too; `ScoredBatch.partial`) and never learned.
        `cascade` False: every record on the full pass even with `ModelConfig.cascade` on (one ranking, offline)."""
        b = len(x)
        start = self.counters["records_scored"]
        refs_t = torch.as_tensor(np.arange(start, start + b) if refs is None else np.asarray(refs, np.int64))
        ts_t = torch.as_tensor(np.zeros(b, np.int64) if timestamps is None else np.asarray(timestamps, np.int64))
        xt = self._tensor(x)
        mask = None if missing is None else input_mask(missing, (b, self.n_channels), self.inputs, self.device)
        if self.inputs.enabled:
            keep = torch.isfinite(xt).all(dim=1) & ~self.limits.poisoned(torch.nan_to_num(xt))
            if mask is not None:  # a partial record's values never enter later records' features
                keep &= ~mask.any(dim=1)
            built = self.inputs.build(xt, assets, times, max_gap, keep, update_context)
            xt = fill_partial(built, self.model, self.n_channels)
        scored = score_records(self.model, self.config, self.limits, xt, self.generator, self.counters, mask, cascade)
        scored.refs, scored.timestamps = refs_t.to(self.device), ts_t.to(self.device)
        if self.inputs.enabled:  # shares per input for explanations, summed per channel for incidents
            scored.input_names, scored.input_share = self.inputs.names, scored.channel_share
            scored.channel_share = self.inputs.fold(scored.channel_share)
            scored.missing = scored.missing[:, : self.n_channels]  # per channel, as the record had them
        return scored

    def learn_many(self, scored: ScoredBatch) -> LearnReport:
        """Learn from the records of a scored batch that were judged normal (never from flagged ones).

        Rows that were not finite, out of range or partial (a dimension missing) are left out of everything: the
        experts' step, weights, calibration, replay, drift and the novelty memory."""
        ev, usable = scored.evaluation, scored.usable_rows
        if ev is None or usable is None:
            raise ValueError("learn_many needs a batch returned by score_many of this detector")
        # Counted on the host arrays (`usable` on the device holds the same rows): no device synchronisation.
        n_usable = int(np.count_nonzero(scored.valid & scored.in_range & ~scored.partial))
        self.cadence.scored(n_usable)
        model, cfg = self.model, self.config
        log_p = torch.as_tensor(scored.log_p_value, device=self.device)
        nll = torch.as_tensor(scored.nll, device=self.device)
        not_fault = model.status[ev.mode] != STATUS_FAULT
        calibrate = usable & not_fault
        learn = calibrate & (log_p >= math.log(cfg.learn_threshold))
        calibrate_capped(model, ev.mode[calibrate], scored.censored(nll)[calibrate])
        n = int(learn.sum())
        report = LearnReport(learned=n, drift=self.drift.update(scored.drift_nll(nll)[usable]))
        self.counters["drifts"] += report.drift
        # gamma decays by the records learned, not all records: decaying by all was tried and made T3 worse
        # (SMD 1-2 -> 1-3, false alarms at the end of b.train 0.53 vs 0.17): known modes faded during the
        # unexplained stretch and were replaced before the new machine was covered.
        model.weights.update(ev.resp[learn].sum(0), n)
        if cfg.novelty.enabled:
            learn_novelty(self, scored, usable, n_usable, usable & not_fault & ~learn, report)
        if n == 0:
            return report
        x, resp, mode = ev.x[learn], ev.resp[learn], ev.mode[learn]
        model.replay.add(mode, x, self.generator)
        self.counters["records_learned"] += n
        if (rows := self.cadence.due(x, resp, cfg)) is None:  # amortised: the step waits; all else has learned
            return report
        x, resp = rows
        report.stepped = True
        step = replay_step(self.learner, x, resp, cfg, self.generator)
        if not step.applied:
            self.counters["steps_skipped"] += 1
            report.skipped_step = step.reason
        self.counters["steps"] += 1
        return report


def learn_novelty(
    detector: MixtureDetector,
    scored: ScoredBatch,
    usable: torch.Tensor,
    n_usable: int,
    unexplained: torch.Tensor,
    report: LearnReport,
) -> None:
    """Remember unexplained records; grow an expert from a sustained coherent run; retire and merge. `n_usable`:
    how many rows `usable` marks, counted by the caller on the host."""
    model, ev = detector.model, scored.evaluation
    assert ev is not None and scored.refs is not None and scored.timestamps is not None
    model.memory.observe(ev.x[usable], unexplained[usable], scored.refs[usable], scored.timestamps[usable])
    mine = usable & (model.status[ev.mode] != STATUS_FAULT)
    model.memory.count_modes(ev.mode[mine], unexplained[mine])
    events, verdict = try_grow(model, model.memory, detector.learner, detector.generator)
    report.events += events
    if verdict is not None and not verdict.accepted:
        report.candidate = verdict.reason
    if not events:  # an expert just added or replaced changes what the lock-in counts meant
        for k, share in model.memory.locked_in():
            if bool(model.active[k]) and int(model.status[k]) == STATUS_LEARNED:
                lockin = try_unlock(model, model.memory, k, share, detector.generator)
                if lockin.accepted:
                    report.unlocked.append(k)
                    detector.counters["unlocks"] += 1
                else:
                    report.lockin = lockin.reason
    report.events += retire_idle(model, model.below_floor, n_usable)
    model.since_merge += n_usable
    if int(model.since_merge) >= detector.config.novelty.merge_every:
        model.since_merge.zero_()
        report.events += merge_duplicates(model, detector.generator)
