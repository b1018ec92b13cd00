"""Try a candidate expert on the short-term memory; if it explains the memory, add it to the mixture.

The candidate is a separate one-expert VAE with its own optimizer, so trying it never disturbs the experts in
service. It is trained on the older part of the memory and must explain the newer part far better than the
mixture does (`min_gain` nats per record, median) and about as well as its own training records
(`min_explained` of them inside its own 99th percentile). Scattered anomalies fail this: one candidate cannot
explain records that have nothing in common.

Records that came scattered in time (the memory's rate trigger) lack the run's evidence that they belong
together, and a broad candidate can beat the mixture on any scattered set, anomalies included. So that candidate
is trained on them plus as many replay records of the experts they fall under, and must also be as tight as a
known mode: its median NLL on the held-out records at most the pooled calibration's score at the learning
threshold (plus `rate_max_excess`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from streammoe.heartbeat import beat
from streammoe.model.experts import StackedVAE
from streammoe.model.learning import ExpertLearner, adam
from streammoe.model.memory import ShortTermMemory
from streammoe.model.mixture import STATUS_LEARNED, MixtureOfVAEs
from streammoe.novelty.events import ModeEvent
from streammoe.novelty.lifecycle import deactivate

CANDIDATE_BATCH = 128


@dataclass
class Verdict:
    accepted: bool
    gain: float
    explained: float
    reason: str = ""


def candidate_scale_floor(model: MixtureOfVAEs) -> torch.Tensor | None:
    """The smallest scale per channel a candidate may take: `candidate_scale_floor` times the median over the
    active experts of theirs. A candidate learns its own units from a few hundred records, and a channel quiet in
    them (a load level that moves over hours) would get a spread far below what the machine shows in any mode."""
    f = model.config.novelty.candidate_scale_floor
    idx = torch.nonzero(model.active).flatten()
    if f <= 0 or idx.numel() == 0:
        return None
    return f * model.experts.scale[idx].median(0).values


def _train_candidate(model: MixtureOfVAEs, x: torch.Tensor, generator: torch.Generator | None) -> StackedVAE:
    cfg = model.config
    cand = StackedVAE(1, model.n_channels, cfg.hidden, cfg.latent, model.experts.n_values).to(x.device)
    cand.active[0] = True
    cand.set_scale(0, x, candidate_scale_floor(model))
    opt = adam(cand.parameters(), cfg.learning_rate * 3)
    for step in range(cfg.novelty.candidate_steps):
        if step % 50 == 0:
            beat("training a candidate expert")  # /healthz: busy, not stuck
        batch = x[torch.randint(x.shape[0], (min(CANDIDATE_BATCH, x.shape[0]),), generator=generator, device=x.device)]
        loss = -cand.elbo(batch, generator=generator).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(cand.parameters(), 10.0)
        opt.step()
    return cand


@torch.no_grad()
def _context(model: MixtureOfVAEs, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """As many replay records as `x` has, drawn from the experts that `x` is assigned to, in the same proportions."""
    mode = model.evaluate(x, model.config.n_samples, generator).mode
    parts = []
    for k, c in zip(*torch.unique(mode, return_counts=True)):
        pool = model.replay.from_mode(int(k))
        if pool.shape[0]:
            parts.append(pool[torch.randint(pool.shape[0], (int(c),), generator=generator, device=pool.device)])
    return torch.cat(parts) if parts else x[:0]


@torch.no_grad()
def judge(
    model: MixtureOfVAEs,
    cand: StackedVAE,
    train: torch.Tensor,
    hold: torch.Tensor,
    generator: torch.Generator | None,
    trigger: str = "run",
    far: torch.Tensor | None = None,
) -> Verdict:
    """Accept a candidate trained on `train` if it explains the newer `hold` (see the module's docstring; a fast
    try, with the `far` channels of a run far from every expert, is judged on whether it has settled instead)."""
    cfg = model.config
    s = cfg.n_samples
    cand_hold = cand.iwae(hold, s, generator=generator)[0]
    cand_train = cand.iwae(train, s, generator=generator)[0]
    mix_hold = model.evaluate(hold, s, generator).log_px
    gain = float(torch.median(cand_hold - mix_hold))
    explained = float((cand_hold >= torch.quantile(cand_train, 0.01)).float().mean())
    if not math.isfinite(gain):
        return Verdict(False, gain, explained, "non-finite likelihood")
    if far is not None:
        # About 150 records of a state far from every mode: a candidate knows them by heart, and slow
        # disturbances move the next ones by more than its own spread, so `explained` would refuse every new
        # mode of a process with slow dynamics. What a far run must show instead is that it has settled: on the
        # channels that moved far, the newest records' median is within fast_settled of the candidate's spreads
        # of the older ones' (a drift or a transient still under way fails this).
        moved = float(((hold.median(0).values - train.median(0).values).abs() / cand.scale[0])[far].max())
        ok = gain >= cfg.novelty.min_gain and moved <= cfg.novelty.fast_settled
        reason = "" if ok else ("not better than the mixture" if gain < cfg.novelty.min_gain else "still moving")
        return Verdict(ok, gain, explained, reason)
    ok = gain >= cfg.novelty.min_gain and explained >= cfg.novelty.min_explained
    reason = "" if ok else ("not better than the mixture" if gain < cfg.novelty.min_gain else "incoherent")
    if ok and trigger == "rate":
        # Scattered in time, the records' only claim to be a mode is that one expert predicts them about as well
        # as the known modes predict their own records: the candidate's median NLL on them must not exceed the
        # pooled calibration's score at the learning threshold (a 1-in-100 normal record) by more than
        # `rate_max_excess`. A broad candidate spread over unrelated anomalies fails this even when it beats the
        # mixture by a wide margin.
        pooled = torch.tensor([model.config.k_max], device=hold.device)
        bar = float(model.calibration.score_at(pooled, math.log(cfg.learn_threshold))[0]) + cfg.novelty.rate_max_excess
        if float(torch.median(-cand_hold)) > bar:
            ok, reason = False, "looser than the known modes"
    return Verdict(ok, gain, explained, reason)


@torch.no_grad()
def far_channels(model: MixtureOfVAEs, x: torch.Tensor) -> torch.Tensor | None:
    """The channels on which the records' median lies at least fast_shift of the nearest expert's own spreads
    away, if there are at least fast_channels of them (else None): a setpoint change moves many channels far
    (valves leave their stops, flows move by hundreds of spreads); a fault moves a few (SKAB's valve faults: at
    most 2 of 8 channels 20 spreads out)."""
    cfg = model.config.novelty
    idx = torch.nonzero(model.active).flatten()
    shift = (x.median(0).values - model.experts.loc[idx]).abs() / model.experts.scale[idx]  # (Ka, C)
    far = shift >= cfg.fast_shift
    nearest = int(far.sum(1).argmin())
    return far[nearest] if int(far[nearest].sum()) >= cfg.fast_channels else None


def try_grow(
    model: MixtureOfVAEs, memory: ShortTermMemory, learner: ExpertLearner, generator: torch.Generator | None
) -> tuple[list[ModeEvent], Verdict | None]:
    """If the memory is ready, train and judge a candidate; on acceptance add it (retiring the lightest expert
    if every slot is taken and it weighs less than `replace_weight`) and return the events."""
    trigger = memory.trigger()
    if trigger is None:
        return [], None
    if trigger == "fast":
        memory.fast_seen.fill_(int(memory.seen))
        far = far_channels(model, memory.contents("fast").x)
        if far is None:
            return [], None  # near the known modes: the run waits for min_records, like any fault would
    free = torch.nonzero(~model.active).flatten()
    weights = model.weights.mean(model.active)
    # An expert added in the last `protect_records` is not replaceable: it starts light by construction,
    # and replacing it with the next candidate would make experts churn instead of settling.
    mature = (
        model.active
        & (memory.seen - model.born >= model.config.novelty.protect_records)
        & (model.status == STATUS_LEARNED)  # an operator's verdict is never replaced automatically
    )
    lightest = int(torch.where(mature, weights, torch.full_like(weights, 2.0)).argmin())
    if free.numel() == 0 and (
        not bool(mature.any()) or float(weights[lightest]) >= model.config.novelty.replace_weight
    ):
        memory.forget()
        return [], Verdict(False, float("nan"), float("nan"), "no free expert slot (k_max reached)")
    seen = memory.contents(trigger)
    n = seen.x.shape[0]
    n_hold = max(1, int(n * model.config.novelty.holdout_fraction))
    train, hold = seen.x[: n - n_hold], seen.x[n - n_hold :]
    # A scattered set of unexplained records is mostly the edge of modes the mixture already has (a wider spread
    # than their experts learned): trained on those alone the candidate would model a hollow shell. With as many
    # replay records of the experts they fall under, it learns the whole mode and its edge.
    fit_on = train if trigger != "rate" else torch.cat([train, _context(model, train, generator)])
    cand = _train_candidate(model, fit_on, generator)
    verdict = judge(model, cand, train, hold, generator, trigger, far if trigger == "fast" else None)
    if not verdict.accepted:
        if trigger != "fast":  # a rejected fast try keeps the run: it is retried, and tried whole at min_records
            memory.forget()
        return [], verdict
    memory.forget()
    events: list[ModeEvent] = []
    if free.numel() == 0:
        # At capacity: the lightest expert (below replace_weight) makes room for the mode that is here now.
        events.append(
            ModeEvent("mode_retired", lightest, 0, detail={"weight": float(weights[lightest]), "replaced": 1.0})
        )
        deactivate(model, lightest)
        learner.reset_expert_state(lightest)
        slot = lightest
    else:
        slot = int(free[0])
    with torch.no_grad():
        model.experts.load_expert(slot, cand)
        model.experts.active[slot] = True
        model.status[slot] = STATUS_LEARNED
        model.born[slot] = memory.seen
        model.weights.gamma[slot] = float(n)
        model.calibration.reset_mode(slot)
        model.replay.reset_mode(slot)
        memory.reset_expert(slot)
    learner.reset_expert_state(slot)
    s = model.config.n_samples
    ev_train = model.evaluate(train, s, generator)
    model.replay.add(ev_train.mode, train, generator)
    ev_hold = model.evaluate(hold, s, generator)
    model.calibration.update(ev_hold.mode, -ev_hold.log_px)
    events.append(
        ModeEvent(
            kind="mode_added",
            expert=slot,
            size=n,
            first_ref=int(seen.ref[0]),
            last_ref=int(seen.ref[-1]),
            first_ts=int(seen.ts[0]),
            last_ts=int(seen.ts[-1]),
            detail={"gain": round(verdict.gain, 3), "explained": round(verdict.explained, 3)},
        )
    )
    return events, verdict
