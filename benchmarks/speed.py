"""Scoring throughput of MixtureDetector.score_many alone (no learning, no I/O).

The model is fitted on 8 well-separated modes of the test kit's machine so that 8 experts are active: the
cost of scoring grows with the active experts, and a daemon near capacity runs at K = k_max.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from streammoe.model.config import ModelConfig
from streammoe.model.detector import MixtureDetector
from streammoe.testing.machine import Machine

N_CLUSTERS = 8


def synthetic_modes(n_channels: int, rows_per_mode: int, seed: int = 0) -> np.ndarray:
    """`rows_per_mode` rows of each of N_CLUSTERS far-apart modes of the test kit's machine (centres spread 10,
    three factors each), mode by mode."""
    machine = Machine(n_channels, N_CLUSTERS, factors=3, spread=10.0, shape_seed=seed)
    return machine.rows(seed, N_CLUSTERS * rows_per_mode, mode=np.repeat(np.arange(N_CLUSTERS), rows_per_mode))


def measure(
    n_channels: int = 38,
    batch: int = 1024,
    samples: tuple[int, ...] = (8, 1),
    repeats: int = 15,
    warmup: int = 3,
    fit_steps: int = 600,
    device: str | None = None,
) -> dict:
    """Median records/s of score_many on one batch, per importance-sample count."""
    # Every record on the full pass at each S (the cascade's own figures: benchmarks.cascade, --perf).
    config = ModelConfig(k_max=N_CLUSTERS, fit_steps=fit_steps, min_expert_weight=0.01, cascade={"enabled": False})
    x = synthetic_modes(n_channels, 2000)
    detector = MixtureDetector(n_channels, config, device=device)
    t0 = time.perf_counter()
    report = detector.fit(x, k=N_CLUSTERS)
    fit_s = time.perf_counter() - t0
    rng = np.random.default_rng(1)
    data = x[rng.choice(len(x), batch, replace=False)]
    runs = []
    for s in samples:
        detector.config.n_samples = s
        for _ in range(warmup):
            detector.score_many(data)
        rates = []
        for _ in range(repeats):
            t = time.perf_counter()
            detector.score_many(data)
            rates.append(batch / (time.perf_counter() - t))
        runs.append(
            {
                "n_samples": s,
                "median": float(np.median(rates)),
                "min": float(np.min(rates)),
                "max": float(np.max(rates)),
                "repeats": repeats,
            }
        )
    setup = (
        f"K={detector.model.n_active} active experts (fit k={N_CLUSTERS} on 8 modes of the kit machine, "
        f"{fit_steps} steps, {fit_s:.0f} s), {n_channels} channels, batch {batch}, device {detector.device}, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads; {warmup} warm-up calls, "
        f"median of {repeats} timed calls"
    )
    return {"setup": setup, "runs": runs, "k_active": int(detector.model.n_active), "fit_weights": report.weights}
