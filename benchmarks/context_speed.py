"""Scoring throughput with a time context against window 1, paired in one process.

`python -m benchmarks.context_speed [--window 10] [--features diff,std,rough] [--decoders full,linear]
[--assets 64] [--repeats 15] [--learn]`: the same 8-mode machine as `bench --speed` (benchmarks/speed.py), fitted
once at window 1 and once with the context per feature decoder (ContextConfig.decoder); then score_many on one
batch of `--batch` records from `--assets` interleaved assets, the models timed in turn (ABCABC...) so the box's
noise falls on all. Prints records/s per model and each context model's ratio of the medians to window 1 (the
goal: >= 0.7). The context models' calls move their context on, as in the daemon. `--learn` times score_many
followed by learn_many (the prequential step) instead of score_many alone.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from benchmarks.speed import N_CLUSTERS, synthetic_modes
from streammoe.context.settings import ContextConfig
from streammoe.model.config import ModelConfig
from streammoe.model.detector import MixtureDetector


def measure(
    window: int = 10,
    features: tuple[str, ...] = ("diff", "std", "rough"),
    decoders: tuple[str, ...] = ("full",),
    learn: bool = False,
    n_channels: int = 38,
    batch: int = 1024,
    assets: int = 64,
    repeats: int = 15,
    n_samples: int = 8,
    fit_steps: int = 300,
) -> dict:
    x = synthetic_modes(n_channels, 1000)
    names = np.array([f"asset-{i % assets}" for i in range(len(x))])
    models: dict[str, MixtureDetector] = {}
    for name, w, decoder in [("W=1", 1, "full")] + [(f"W={window} {d}", window, d) for d in decoders]:
        flags = {f: f in features for f in ("diff", "mean", "dev", "std", "rough")}
        cfg = ModelConfig(
            k_max=N_CLUSTERS,
            fit_steps=fit_steps,
            min_expert_weight=0.01,
            n_samples=n_samples,
            cascade={"enabled": False},  # every record on the full pass: the context's cost alone
            context=ContextConfig(window=w, decoder=decoder, **flags),
        )
        det = MixtureDetector(n_channels, cfg)
        det.fit(x, k=N_CLUSTERS, assets=names)
        models[name] = det
    rng = np.random.default_rng(1)
    rows = rng.choice(len(x), batch, replace=False)
    data, batch_assets = x[rows], np.array([f"asset-{i % assets}" for i in range(batch)])
    clock = {w: float(len(x)) for w in models}
    rates: dict[str, list[float]] = {w: [] for w in models}

    def call(w: str) -> float:
        times = clock[w] + np.arange(batch, dtype=np.float64) // assets
        clock[w] = float(times[-1]) + 1
        t = time.perf_counter()
        scored = models[w].score_many(data, assets=batch_assets, times=times, max_gap=10.0)
        if learn:
            models[w].learn_many(scored)
        return batch / (time.perf_counter() - t)

    for _ in range(3):
        for w in models:
            call(w)
    for _ in range(repeats):
        for w in models:
            rates[w].append(call(w))
    med = {w: float(np.median(r)) for w, r in rates.items()}
    ctx = next(m for w, m in models.items() if w != "W=1")
    return {
        "setup": (
            f"K={models['W=1'].model.n_active} experts, {n_channels} channels ({ctx.inputs.n_inputs} inputs "
            f"at window {window}: {', '.join(ctx.inputs.features)}), batch {batch} from {assets} "
            f"interleaved assets, S={n_samples}, torch {torch.__version__} with {torch.get_num_threads()} "
            f"threads; {'score_many + learn_many' if learn else 'score_many'}; 3 warm-up rounds, {repeats} "
            "rounds timed in turn"
        ),
        "records_per_s": {
            w: {"median": med[w], "min": min(rates[w]), "max": max(rates[w]), "experts": models[w].model.n_active}
            for w in models
        },
        "ratio": {w: med[w] / med["W=1"] for w in models if w != "W=1"},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--assets", type=int, default=64)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--features", default="diff,std,rough", help="comma list of diff, mean, dev, std, rough")
    p.add_argument("--decoders", default="full,linear", help="comma list of full, linear (ContextConfig.decoder)")
    p.add_argument("--learn", action="store_true", help="time score_many + learn_many")
    a = p.parse_args()
    result = measure(
        a.window,
        tuple(a.features.split(",")),
        tuple(a.decoders.split(",")),
        a.learn,
        batch=a.batch,
        assets=a.assets,
        repeats=a.repeats,
        n_samples=a.samples,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
