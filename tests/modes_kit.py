"""Two operating modes of a five-channel machine and a streaming loop: what the novelty and settling tests share.

Mode A is standard normal; mode B sits far from it (B_CENTRE), so a run of B is unexplained until an expert grows
for it. NOVELTY is the small memory those tests use (300-record runs in a 1000-record memory)."""

from __future__ import annotations

import numpy as np

from streammoe.model.config import NoveltyConfig
from streammoe.model.detector import MixtureDetector
from streammoe.testing.machine import Machine

C = 5
NOVELTY = NoveltyConfig(min_records=300, window=600, memory_size=1000, candidate_steps=400)


B_CENTRE = np.array([15.0, -15.0, 8.0, 0.0, 4.0])
MACHINE = Machine(C, modes=2, factors=0, noise=1.0, centres=np.stack([np.zeros(C), B_CENTRE]))


def mode_a(rng: np.random.Generator, n: int) -> np.ndarray:
    return MACHINE.rows(rng, n, mode=0)


def mode_b(rng: np.random.Generator, n: int) -> np.ndarray:
    return MACHINE.rows(rng, n, mode=1)


def stream(det: MixtureDetector, x: np.ndarray, batch: int = 256) -> tuple[np.ndarray, list]:
    """Score then learn `x` in batches, as the daemon does; the flags of every record and the mode events.
    Refs start at 10 000, so an event's first_ref - 10 000 is the record's index in `x`."""
    flags, events = [], []
    for i in range(0, len(x), batch):
        scored = det.score_many(x[i : i + batch], refs=np.arange(i, i + len(x[i : i + batch])) + 10_000)
        flags.append(scored.is_anomaly)
        events += det.learn_many(scored).events
    return np.concatenate(flags), events
