"""Experts leave the mixture: retired when their weight stays below a floor, merged when two are duplicates."""

from __future__ import annotations

import torch

from streammoe.model.mixture import STATUS_LEARNED, MixtureOfVAEs
from streammoe.novelty.events import ModeEvent


@torch.no_grad()
def retire_idle(model: MixtureOfVAEs, below_floor: torch.Tensor, n_records: int) -> list[ModeEvent]:
    """Count records each expert spends below `retire_weight`; retire those past `retire_after` (never the last,
    never one an operator has marked: a fault mode learns nothing and fades, and must not come back unmarked)."""
    cfg = model.config.novelty
    weights = model.weights.mean(model.active)
    below = model.active & (weights < cfg.retire_weight) & (model.status == STATUS_LEARNED)
    below_floor[below] += n_records
    below_floor[~below] = 0
    events = []
    for k in torch.nonzero(below_floor >= cfg.retire_after).flatten().tolist():
        if model.n_active <= 1:
            break
        events.append(ModeEvent("mode_retired", k, int(below_floor[k]), detail={"weight": float(weights[k])}))
        deactivate(model, k)
        below_floor[k] = 0
    return events


@torch.no_grad()
def merge_duplicates(model: MixtureOfVAEs, generator: torch.Generator | None) -> list[ModeEvent]:
    """Merge one pair of experts that each explain the other's replay records within `merge_margin` nats."""
    idx = torch.nonzero(model.active).flatten()
    if idx.numel() < 2:
        return []
    s = model.config.n_samples
    margin = model.config.novelty.merge_margin
    # ll[i, j]: mean log-likelihood of expert i's replay records under expert j (one batched pass per i).
    ll = torch.full((idx.numel(), idx.numel()), -torch.inf)
    for a, k in enumerate(idx.tolist()):
        x = model.replay.from_mode(k)
        if x.shape[0] >= 16:
            ll[a] = model.experts.iwae(x, s, idx, generator).mean(1).cpu()
    weights = model.weights.mean(model.active)[idx].cpu()
    judged = torch.isfinite(ll.diagonal()) & (model.status[idx] == STATUS_LEARNED).cpu()
    for a in range(idx.numel()):
        for b in range(a + 1, idx.numel()):
            if not (judged[a] and judged[b]):  # too little history to compare, or an operator's verdict stands
                continue
            if ll[a, b] >= ll[a, a] - margin and ll[b, a] >= ll[b, b] - margin:
                keep, drop = (a, b) if weights[a] >= weights[b] else (b, a)
                k_keep, k_drop = int(idx[keep]), int(idx[drop])
                model.weights.gamma[k_keep] += model.weights.gamma[k_drop]
                event = ModeEvent(
                    "mode_merged",
                    k_drop,
                    int(torch.clamp(model.replay.seen[k_drop], max=model.replay.size)),
                    into=k_keep,
                    detail={"margin": float(ll[drop, drop] - ll[drop, keep])},
                )
                deactivate(model, k_drop)
                return [event]
    return []


def deactivate(model: MixtureOfVAEs, k: int) -> None:
    model.experts.active[k] = False
    model.weights.gamma[k] = 0
    model.calibration.reset_mode(k)
    model.replay.reset_mode(k)
