"""Cascade scoring: a cheap first pass for every record, the full S-sample pass only where it can matter.

The first pass is the full pass's first importance sample alone (one decoder pass per expert instead of S).
The S-sample estimate is at least any one of its samples minus log S (logsumexp over S samples minus log S),
per expert and so for the mixture: NLL_S <= NLL_1 + log S. A record whose bound NLL_1 + log S lies under the
score at p = `ModelConfig.cascade.margin_p` (at least 0.05: under the alert and learning thresholds' scores and
under the calibration's tail) of every active mode therefore cannot alert, be refused for learning or enter
the new-mode memory under the full pass, whichever mode the full pass assigns it to. Every other record (and
every non-finite or out-of-range one) is rescored with the full pass, on exactly the noise a full pass over the
whole batch gives it, so its scores, decisions and breakdown are the full pass's.

Every active mode, not only those the first pass finds likely: on SMD the full pass put 1 in 1000 records into
a tight mode that their first sample gave a responsibility under 1e-4 (down to 0), and alerted there
(benchmarks/cascade.py, docs/model.md). A fault-marked expert or a mostly censored calibration buffer makes the
cascade rescore every record.
"""

from __future__ import annotations

import math
from dataclasses import fields

import torch
from torch import Tensor

from streammoe.model.grouped import ranks_by_row
from streammoe.model.mixture import STATUS_FAULT, Evaluation, MixtureOfVAEs

# A calibration buffer's tail (its top 5 %) must hold full-pass scores: past this censored share, every record
# judged against it is rescored, so the share falls again.
MAX_CENSORED = 0.9


@torch.no_grad()
def first_pass(model: MixtureOfVAEs, x: Tensor, noise: Tensor, observed: Tensor | None = None) -> Evaluation:
    """The E-step on the first of the full pass's samples alone (`noise` from `MixtureOfVAEs.draw_noise`)."""
    return model.evaluate(x, 1, observed=observed, noise=noise[:, :1])


@torch.no_grad()
def needs_full_pass(model: MixtureOfVAEs, first: Evaluation, n_samples: int, must: Tensor) -> Tensor:
    """(B,) bool: the rows the first pass cannot clear. A row is cleared when its NLL bound (first sample plus
    log S) lies under the score at p = `cascade.margin_p` of every active mode, since the full pass may assign
    it to any of them (a fault mode or one judged against a mostly censored buffer clears nothing); rows the
    caller `must` rescore (not finite, out of range) and rows without a finite first-pass likelihood never are."""
    cal, cfg = model.calibration, model.config
    bound = -first.log_px + math.log(n_samples)
    modes = torch.arange(cfg.k_max, device=bound.device)
    level = cal.score_at(modes, math.log(cfg.cascade.margin_p))  # (k_max,)
    censored = censored_counts(model)  # counted once: the share below and the budget after it
    shut = (share_of(censored, cal.n_reference())[cal.rows_for(modes)] > MAX_CENSORED) | (model.status == STATUS_FAULT)
    level = torch.where(shut, torch.full_like(level, -math.inf), level)
    lowest = torch.where(model.active, level, torch.full_like(level, math.inf)).min().to(bound.dtype)
    cleared = ~must & torch.isfinite(bound) & (bound < lowest)
    return ~within_censoring_budget(model, cleared, first.mode, censored)


@torch.no_grad()
def within_censoring_budget(model: MixtureOfVAEs, cleared: Tensor, modes: Tensor, censored: Tensor) -> Tensor:
    """`cleared` less the rows whose censored entry would take a buffer past MAX_CENSORED: each cleared row
    enters its mode's buffer and the pooled one as censored when the batch is learned, and a batch with more
    cleared rows than a buffer holds real scores would otherwise censor all of it (its tail -inf, its p-values
    NaN: nothing alerts). Checked at scoring, for the whole batch, so a buffer stays within the share after the
    update; evictions are not counted (they only lower the share), so the bound is safe. Those rows get the full
    pass instead: exact scores, no bias. The first rows of each buffer's allowance stay cleared, in order.
    `censored`: each buffer's censored entries now (`censored_counts`)."""
    cal = model.calibration
    n, size = cal.n_reference(), cal.size
    pooled = cal.k_max
    rows = torch.where(cleared, modes.clamp(min=0), torch.full_like(modes, pooled + 1))  # pooled + 1: not cleared
    order, _, rank = ranks_by_row(rows, pooled + 2)
    # v more censored entries in a buffer of n (c censored) keep c + v <= MAX_CENSORED * min(size, n + v).
    room = torch.minimum((MAX_CENSORED * n - censored) / (1.0 - MAX_CENSORED), MAX_CENSORED * size - censored).floor()
    room = room.clamp(min=0).to(n.dtype)
    keep_sorted = rank < torch.cat([room, room.new_zeros(1)])[rows[order]]  # room per buffer, then 0
    keep = torch.zeros_like(cleared)
    keep[order] = keep_sorted
    # The pooled buffer takes every cleared row: the first `room[pooled]` of those kept per mode.
    keep &= torch.cumsum(keep.to(n.dtype), 0) <= room[pooled]
    return keep


@torch.no_grad()
def rescore(
    model: MixtureOfVAEs, first: Evaluation, rows: Tensor, noise: Tensor, observed: Tensor | None = None
) -> Evaluation:
    """`first` with the rows marked in `rows` replaced by the full pass's results for them (their slice of
    `noise`, the whole batch's)."""
    x = first.x
    idx = torch.nonzero(rows).flatten()
    if idx.numel() == 0:
        return first
    mask = None if observed is None else observed[idx]
    full = model.evaluate(x[idx], noise.shape[1], observed=mask, noise=noise.index_select(2, idx))
    merged = {}
    for f in fields(Evaluation):
        a, b = getattr(first, f.name), getattr(full, f.name)
        if f.name == "x":
            merged[f.name] = a
        elif f.name == "log_pk":  # (k_max, B)
            out = a.clone()
            out[:, idx] = b
            merged[f.name] = out
        else:
            out = a.clone()
            out[idx] = b
            merged[f.name] = out
    return Evaluation(**merged)


@torch.no_grad()
def cascade_evaluate(
    model: MixtureOfVAEs,
    x: Tensor,
    n_samples: int,
    generator: torch.Generator | None,
    must: Tensor,
    observed: Tensor | None = None,
) -> tuple[Evaluation, Tensor, Tensor]:
    """(evaluation, rows rescored, first-pass NLL of every row); `observed` as for `MixtureOfVAEs.evaluate`.
    The full pass's noise is drawn for the whole batch, so the generator advances as in a full pass and every
    rescored row gets its own noise."""
    noise = model.draw_noise(x, n_samples, generator)
    first = first_pass(model, x, noise, observed)
    rows = needs_full_pass(model, first, n_samples, must)
    return rescore(model, first, rows, noise, observed), rows, -first.log_px


def censored_share(model: MixtureOfVAEs) -> Tensor:
    """Per calibration buffer, the share of its scores that are censored (-inf: a record the cascade did not
    rescore, known only to lie below the margin); 1 for an empty buffer."""
    return share_of(censored_counts(model), model.calibration.n_reference())


def share_of(censored: Tensor, n: Tensor) -> Tensor:
    """Censored entries as a share of each buffer's `n` filled ones; 1 for an empty buffer."""
    return torch.where(n > 0, censored / n.clamp(min=1), torch.ones_like(n, dtype=torch.float32))


def censored_counts(model: MixtureOfVAEs) -> Tensor:
    """Per calibration buffer, how many of its filled slots hold a censored score (-inf)."""
    cal = model.calibration
    n = cal.n_reference()
    filled = torch.arange(cal.size, device=n.device)[None, :] < n[:, None]
    return (filled & (cal.scores == -math.inf)).sum(1)
