"""Try a candidate expert on the short-term memory; if it explains the memory, add it to the mixture.

The candidate is a separate one-expert VAE with its own optimizer, so trying it never disturbs the experts in
service. It is trained on the older part of the memory and must explain the newer part far better than the
mixture does (`min_gain` nats per record, median) and about as well as its own training records
(`min_explained` of them inside its own 99th percentile). Scattered anomalies fail this: one candidate cannot
explain records that have nothing in common.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from streammoe.model.experts import StackedVAE
from streammoe.model.learning import ExpertLearner
from streammoe.model.mixture import STATUS_LEARNED, MixtureOfVAEs
from streammoe.novelty.events import ModeEvent
from streammoe.novelty.lifecycle import deactivate
from streammoe.novelty.memory import ShortTermMemory

CANDIDATE_BATCH = 128


@dataclass
class Verdict:
    accepted: bool
    gain: float
    explained: float
    reason: str = ""


def _train_candidate(model: MixtureOfVAEs, x: torch.Tensor, generator: torch.Generator | None) -> StackedVAE:
    cfg = model.config
    cand = StackedVAE(1, model.n_channels, cfg.hidden, cfg.latent).to(x.device)
    cand.active[0] = True
    opt = torch.optim.Adam(cand.parameters(), lr=cfg.learning_rate * 3)
    for _ in range(cfg.novelty.candidate_steps):
        batch = x[torch.randint(x.shape[0], (min(CANDIDATE_BATCH, x.shape[0]),), generator=generator, device=x.device)]
        loss = -cand.elbo(batch, generator=generator).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(cand.parameters(), 10.0)
        opt.step()
    return cand


@torch.no_grad()
def judge(model: MixtureOfVAEs, cand: StackedVAE, train: torch.Tensor, hold: torch.Tensor,
          generator: torch.Generator | None) -> Verdict:
    cfg = model.config
    s = cfg.n_samples
    cand_hold = cand.iwae(hold, s, generator=generator)[0]
    cand_train = cand.iwae(train, s, generator=generator)[0]
    mix_hold = model.evaluate(hold, s, generator).log_px
    gain = float(torch.median(cand_hold - mix_hold))
    explained = float((cand_hold >= torch.quantile(cand_train, 0.01)).float().mean())
    if not math.isfinite(gain):
        return Verdict(False, gain, explained, "non-finite likelihood")
    ok = gain >= cfg.novelty.min_gain and explained >= cfg.novelty.min_explained
    reason = "" if ok else ("not better than the mixture" if gain < cfg.novelty.min_gain else "incoherent")
    return Verdict(ok, gain, explained, reason)


def try_grow(
    model: MixtureOfVAEs, memory: ShortTermMemory, learner: ExpertLearner, generator: torch.Generator | None
) -> tuple[list[ModeEvent], Verdict | None]:
    """If the memory is ready, train and judge a candidate; on acceptance add it (retiring the lightest expert
    if every slot is taken and it weighs less than `replace_weight`) and return the events."""
    if not memory.ready():
        return [], None
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
    if free.numel() == 0 and (not bool(mature.any()) or float(weights[lightest]) >= model.config.novelty.replace_weight):
        memory.forget()
        return [], Verdict(False, float("nan"), float("nan"), "no free expert slot (k_max reached)")
    seen = memory.contents()
    n = seen.x.shape[0]
    n_hold = max(1, int(n * model.config.novelty.holdout_fraction))
    train, hold = seen.x[: n - n_hold], seen.x[n - n_hold :]
    cand = _train_candidate(model, train, generator)
    verdict = judge(model, cand, train, hold, generator)
    memory.forget()
    if not verdict.accepted:
        return [], verdict
    events: list[ModeEvent] = []
    if free.numel() == 0:
        # At capacity: the lightest expert (below replace_weight) makes room for the mode that is here now.
        events.append(ModeEvent("mode_retired", lightest, 0, detail={"weight": float(weights[lightest]), "replaced": 1.0}))
        deactivate(model, lightest)
        learner.reset_expert_state(lightest)
        slot = lightest
    else:
        slot = int(free[0])
    with torch.no_grad():
        for (name, p), q in zip(model.experts.named_parameters(), cand.parameters()):
            p[slot].copy_(q[0])
        model.experts.active[slot] = True
        model.status[slot] = STATUS_LEARNED
        model.born[slot] = memory.seen
        model.weights.gamma[slot] = float(n)
        model.calibration.reset_mode(slot)
        model.replay.reset_mode(slot)
    learner.reset_expert_state(slot)
    s = model.config.n_samples
    ev_train = model.evaluate(train, s, generator)
    model.replay.add(ev_train.mode, train, generator)
    ev_hold = model.evaluate(hold, s, generator)
    model.calibration.update(ev_hold.mode, -ev_hold.log_px)
    events.append(ModeEvent(
        kind="mode_added", expert=slot, size=n,
        first_ref=int(seen.ref[0]), last_ref=int(seen.ref[-1]), first_ts=int(seen.ts[0]), last_ts=int(seen.ts[-1]),
        detail={"gain": round(verdict.gain, 3), "explained": round(verdict.explained, 3)},
    ))
    return events, verdict
