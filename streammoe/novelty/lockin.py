"""Break an expert's lock-in: when a sustained share of its own records goes unexplained and they are coherent
with its mode, measure its calibration's tail again instead of clipping it away.

Only records judged normal teach an expert, and records past the learning threshold's score enter its
calibration clipped to that score. When more than the calibration's tail (5 %) of an expert's records land past
it for long (its mode widened or moved a little, short of a new mode), the 95th and 99th percentiles both sit on
the clipped value, the exponential tail collapses onto it, and every such record alerts and none is learned: the
expert never catches up ("lock-in"). On SMD's new machines (T3) this kept 5-25 % of records alerting for
thousands of records.

The memory keeps each expert's unexplained share over about its last `lockin_window` records, and the stream's
(model/memory.py). Once both reach `lockin_share` (and 32 of the expert's records went unexplained, and half a window of
records went by since its last test), the expert's unexplained records from the memory are tested for coherence
with its mode: a copy of the expert
(warm-started from its weights) is trained for `lockin_steps` on the older 70 % of them plus 70 % of its replay
records. The copy must fit the held-out newest 30 % as tightly as a known mode fits its own records (median NLL
at most the pooled calibration's score at the learning threshold plus `rate_max_excess`, the rate trigger's bar)
and lose at most `lockin_margin` nats (median) on the held-out 30 % of the replay against the expert. Scattered
anomalies fail the first test (one expert cannot fit records with nothing in common tightly); records of another
mode make the copy forget its own and fail the second.

Passed, the expert itself stays as it is (the copy is only the test: swapped in, a copy trained on 512 replay
records is sharper on them and alarms far more on the next records; measured on T3). What changes is its
calibration: the top entries of its reference buffer, as many as the share of records that went unexplained
(the clipped ones), are replaced by the mixture's scores of those records, so the tail is measured instead of
collapsed; records that now pass the learning threshold teach the expert as usual. The records leave the memory.
"""

from __future__ import annotations

import math

import torch

from streammoe.model.experts import StackedVAE
from streammoe.model.learning import adam
from streammoe.model.memory import MIN_MISFITS as MIN_RECORDS
from streammoe.model.memory import ShortTermMemory
from streammoe.model.mixture import MixtureOfVAEs
from streammoe.novelty.growth import CANDIDATE_BATCH, Verdict


def _copy_of(model: MixtureOfVAEs, k: int) -> StackedVAE:
    cfg = model.config
    copy = StackedVAE(1, model.n_channels, cfg.hidden, cfg.latent, model.experts.n_values).to(model.active.device)
    with torch.no_grad():
        copy.load_expert(0, model.experts, k)
        copy.active[0] = True
    return copy


def try_unlock(
    model: MixtureOfVAEs, memory: ShortTermMemory, k: int, share: float, generator: torch.Generator | None
) -> Verdict:
    """Test expert k's unexplained records for coherence with its mode; if they pass, re-measure its calibration's
    tail with them (`share`: the unexplained share of its records over the last lock-in window). The verdict's
    `gain` is the slack under the tightness bar (nats), `explained` the copy's median loss on the expert's own
    held-out records."""
    cfg = model.config
    s = cfg.n_samples
    frac = cfg.novelty.holdout_fraction
    slots, seen = memory.recent_entries()
    own = model.replay.from_mode(k)
    if slots.numel() < MIN_RECORDS or own.shape[0] < MIN_RECORDS:
        return Verdict(False, float("nan"), float("nan"), "too few records to refit")
    mine = model.evaluate(seen.x, s, generator).mode == k
    slots, x = slots[mine], seen.x[mine]
    n = x.shape[0]
    if n < MIN_RECORDS:
        return Verdict(False, float("nan"), float("nan"), "too few records to refit")
    n_hold = max(1, int(n * frac))
    train, hold = x[: n - n_hold], x[n - n_hold :]
    # The copy is judged on replay records it was not trained on: it would score its training records far better.
    own = own[torch.randperm(own.shape[0], generator=generator, device=own.device)]
    o_hold = max(1, int(own.shape[0] * frac))
    own_train, own_hold = own[: own.shape[0] - o_hold], own[own.shape[0] - o_hold :]
    fit_on = torch.cat([train, own_train])
    copy = _copy_of(model, k)
    opt = adam(copy.parameters(), cfg.learning_rate)
    for _ in range(cfg.novelty.lockin_steps):
        pick = torch.randint(
            fit_on.shape[0], (min(CANDIDATE_BATCH, fit_on.shape[0]),), generator=generator, device=fit_on.device
        )
        loss = -copy.elbo(fit_on[pick], generator=generator).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(copy.parameters(), 10.0)
        opt.step()
    with torch.no_grad():
        tight = float(torch.median(-copy.iwae(hold, s, generator=generator)[0]))
        kk = torch.tensor([k], device=x.device)
        loss_own = float(
            torch.median(model.experts.iwae(own_hold, s, kk, generator)[0])
            - torch.median(copy.iwae(own_hold, s, generator=generator)[0])
        )
        pooled = torch.tensor([cfg.k_max], device=x.device)
        bar = float(model.calibration.score_at(pooled, math.log(cfg.learn_threshold))[0]) + cfg.novelty.rate_max_excess
        if not math.isfinite(tight) or tight > bar:
            return Verdict(False, bar - tight, loss_own, "refit looser than the known modes")
        if not math.isfinite(loss_own) or loss_own > cfg.novelty.lockin_margin:
            return Verdict(False, bar - tight, loss_own, "refit forgets its mode")
        cal = model.calibration
        filled = int(cal.n_reference()[k])
        top = torch.argsort(cal.scores[k, :filled], descending=True)[: int(filled * share)]
        if top.numel():
            nll = -model.evaluate(x, s, generator).log_px
            cal.replace(k, top, nll[torch.randint(n, (top.numel(),), generator=generator, device=x.device)])
        memory.drop(slots)
    return Verdict(True, bar - tight, loss_own)
