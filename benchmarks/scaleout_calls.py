"""What one scope's model stage costs (`python -m benchmarks.scaleout_model`, part 1): the K-mode model and its stream,
seconds per `score_many` + `learn_many` call by rows per call, one batch split over S scopes on S detectors against
one, and the settings that cut the fixed cost."""

from __future__ import annotations

import gc
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from streammoe.model.detector import MixtureDetector


CHANNELS = [f"c{i}" for i in range(38)]


def fitted(k: int, fit_steps: int, rows: int = 20_000) -> MixtureDetector:
    from benchmarks.workload import synthetic
    from streammoe.model.config import ModelConfig
    from streammoe.model.detector import MixtureDetector

    # Plain (the full pass), so a scope's fixed cost is measured against the same model whatever the default.
    config = ModelConfig(k_max=k, fit_steps=fit_steps, min_expert_weight=0.0, cascade={"enabled": False})
    detector = MixtureDetector(len(CHANNELS), config, CHANNELS, device="cpu")
    detector.fit(synthetic(rows, k, len(CHANNELS), seed=1), k=k)
    assert detector.model.n_active == k, (k, detector.model.n_active)
    return detector


def stream(k: int, n: int = 16_384) -> np.ndarray:
    """Records from the same K modes the detector was fitted on (new rows): a well-fitted scope, so learning
    runs its normal path and no candidate expert is trained during the timing."""
    from benchmarks.workload import synthetic

    return synthetic(n, k, len(CHANNELS), seed=2)


def time_calls(detector: MixtureDetector, x: np.ndarray, sizes: list[int], repeats: int) -> dict[int, dict]:
    """Per rows-per-call: median seconds of score_many, learn_many and both, over interleaved repeats."""
    times: dict[int, list[tuple[float, float]]] = {b: [] for b in sizes}
    pos, extra = 0, {"events": 0, "candidates": 0, "steps": 0}

    def rows(b: int) -> np.ndarray:
        nonlocal pos
        if pos + b > len(x):
            pos = 0
        pos += b
        return x[pos - b : pos]

    for b in sizes:  # warm-up: first calls of each shape allocate
        for _ in range(2):
            detector.learn_many(detector.score_many(rows(b)))
    for _ in range(repeats):
        for b in sizes:
            for _ in range(max(3, min(40, 2048 // b))):
                t0 = time.perf_counter()
                scored = detector.score_many(rows(b))
                t1 = time.perf_counter()
                report = detector.learn_many(scored)
                t2 = time.perf_counter()
                times[b].append((t1 - t0, t2 - t1))
                extra["events"] += len(report.events)
                extra["candidates"] += bool(report.candidate)
                extra["steps"] += report.stepped
    out = {}
    for b, ts in times.items():
        score = statistics.median(t[0] for t in ts)
        learn = statistics.median(t[1] for t in ts)
        total = statistics.median(t[0] + t[1] for t in ts)
        out[b] = {
            "calls": len(ts),
            "score_ms": score * 1e3,
            "learn_ms": learn * 1e3,
            "total_ms": total * 1e3,
            "mean_total_ms": statistics.fmean(t[0] + t[1] for t in ts) * 1e3,
            "records_s": b / total,
        }
    out["during_timing"] = extra  # type: ignore[index]
    return out


def score_learn_split(detectors: list[MixtureDetector], rows: np.ndarray, scope: np.ndarray) -> None:
    """A worker's model stage for one batch: the rows of scope i (`scope`, one index per row) scored and learned by
    `detectors[i]`, in arrival order within each scope."""
    order = np.argsort(scope, kind="stable")
    bounds = np.searchsorted(scope[order], np.arange(len(detectors) + 1))
    for i, det in enumerate(detectors):
        idx = order[bounds[i] : bounds[i + 1]]
        if len(idx):
            det.learn_many(det.score_many(rows[idx]))


def split_check(
    model_dir: Path, detector: MixtureDetector, x: np.ndarray, batch: int, scope_counts: list[int], repeats: int
) -> list[dict]:
    """A worker's model stage for one `batch`-record batch split evenly over S scopes: group the rows by scope,
    then score + learn each scope's rows. Run with S detectors ("many", as a worker holds them) and, interleaved
    with it, with one detector called S times ("one"): the difference is what holding many models costs beyond
    the calls themselves. Median records/s over `repeats` batches (after one warm-up batch)."""
    from streammoe.state.persistence import load_detector

    sets = {s: [load_detector(model_dir, channels=CHANNELS) for _ in range(s)] for s in scope_counts}
    rates: dict[int, dict[str, list[float]]] = {s: {"many": [], "one": []} for s in scope_counts}
    rng = np.random.default_rng(0)
    for r in range(repeats + 1):
        for s in scope_counts:
            rows = x[(r * batch) % (len(x) - batch) :][:batch]
            scope = rng.permutation(np.arange(batch) % s)  # an even split, in arrival order
            for label, detectors in (("many", sets[s]), ("one", [detector] * s)):
                t0 = time.perf_counter()
                score_learn_split(detectors, rows, scope)
                if r:
                    rates[s][label].append(batch / (time.perf_counter() - t0))
    del sets
    gc.collect()
    return [
        {
            "scopes": s,
            "rows_per_scope": batch / s,
            "records_s": statistics.median(rates[s]["many"]),
            "one_detector_records_s": statistics.median(rates[s]["one"]),
        }
        for s in scope_counts
    ]


def levers(detector: MixtureDetector, x: np.ndarray, sizes: list[int], repeats: int) -> dict:
    """Per-call cost at small sizes with the settings that cut it (STREAMMOE_MODEL__LEARN_EVERY=4,
    STREAMMOE_MODEL__N_SAMPLES=1), interleaved with the defaults on the same detector."""
    cfg = detector.config
    base = (cfg.learn_every, cfg.n_samples)
    variants = {"default": base, "learn_every=4": (4, base[1]), "n_samples=1": (base[0], 1)}
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    try:
        for _ in range(repeats):
            for name, (every, samples) in variants.items():
                cfg.learn_every, cfg.n_samples = every, samples
                detector.cadence.batches = min(detector.cadence.batches, every)
                runs[name].append(time_calls(detector, x, sizes, 1))
    finally:
        cfg.learn_every, cfg.n_samples = base
    out = {}
    for name, got in runs.items():
        # the mean per call, not the median: with learn_every=4 three calls in four skip the gradient step
        out[name] = {b: statistics.median(g[b]["mean_total_ms"] for g in got) for b in sizes}
    return out
