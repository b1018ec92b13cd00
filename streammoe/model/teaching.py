"""An operator's verdict on records the model alarmed on: "normal, learn it", or "a fault, keep it out".

The model never learns from records it flagged, so the records of an incident exist only in its short-term
memory of unexplained records (model/memory.py: the scope's last `novelty.memory_size` of them, the ones a new
expert would grow from). A `normal` verdict teaches the experts that explain those records best: their scores
join the experts' calibration uncapped (so the same pattern's p-values are no longer in the alarming tail),
they join the experts' replay reservoirs, and a few learning steps fit them. A `fault` verdict drops them from
the memory, so no new expert ever grows from them. Records no longer in the memory cannot be taught: the
count says so, and the pattern keeps alarming until an operator judges it again while it is remembered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from streammoe.model.learning import replay_step

if TYPE_CHECKING:
    from streammoe.model.detector import MixtureDetector

TEACH_STEPS = 5  # learning steps on the taught records (each with the usual replay of every expert)
FORGOTTEN = -(2**62)  # the memory's mark for an empty or dropped entry


@dataclass
class Taught:
    records: int  # records of the span found in the memory
    learned: int = 0  # of them, taught to the experts (a `normal` verdict)
    modes: dict[int, int] = field(default_factory=dict)  # expert slot -> records taught to it


def remembered(detector: MixtureDetector, refs: list[int]) -> torch.Tensor:
    """Slots of the memory entries with these refs (the caller's record ids, as passed to `score_many`), in
    arrival order."""
    mem = detector.model.memory
    wanted = torch.as_tensor(refs, dtype=mem.ref.dtype, device=mem.ref.device)
    slots = torch.nonzero(torch.isin(mem.ref, wanted) & (mem.seq > FORGOTTEN)).flatten()
    return slots[torch.argsort(mem.seq[slots])]


def teach(detector: MixtureDetector, refs: list[int]) -> Taught:
    """`normal`: the remembered records among `refs` taught to the experts that explain them best."""
    model, cfg, gen = detector.model, detector.config, detector.generator
    slots = remembered(detector, refs)
    out = Taught(records=int(slots.numel()))
    if not out.records:
        return out
    x = model.memory.x[slots].clone()
    with torch.no_grad():
        ev = model.evaluate(x, cfg.n_samples, gen)
    ok = torch.isfinite(ev.log_px)  # the memory holds valid, in-range records only; the model may have moved
    x, mode, resp, nll = x[ok], ev.mode[ok], ev.resp[ok], -ev.log_px[ok]
    if not x.shape[0]:
        return out
    with torch.no_grad():
        model.calibration.update(mode, nll)
        model.replay.add(mode, x, gen)
        model.weights.update(resp.sum(0), int(x.shape[0]))
    for _ in range(TEACH_STEPS):
        replay_step(detector.learner, x, resp, cfg, gen)
    model.memory.drop(slots)
    out.learned = int(x.shape[0])
    out.modes = {int(k): int(c) for k, c in zip(*torch.unique(mode, return_counts=True))}
    return out


def forget(detector: MixtureDetector, refs: list[int]) -> Taught:
    """`fault`: the remembered records among `refs` dropped from the memory (no expert grows from them)."""
    slots = remembered(detector, refs)
    if slots.numel():
        detector.model.memory.drop(slots)
    return Taught(records=int(slots.numel()))
