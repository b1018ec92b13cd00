"""What learning costs per batch: `learn_many` and `ExpertLearner.step` per K, and one new-expert candidate.

`streammoe bench --perf` times `learn_many` with the novelty memory on, where a candidate it trains can land in
one repeat and not the next. Here, one torch thread, best of repeats, printed as one JSON line: the step alone
(a fixed 320-row step: `learn_batch` 256 + 64 replayed, as the online learner sees it), `learn_many` with the
memory off (1024-record batches: the step, weights, calibration, replay, drift) and `_train_candidate` alone.
Run it from two trees alternately to compare a change against its parent in the same minutes:

    PYTHONPATH=/path/to/tree python -m benchmarks.learn_step --ks 1,8,16
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from benchmarks.perf import N_MODES, fitted, synthetic
from streammoe.novelty.growth import _train_candidate

ROWS = 320


def measure(ks: tuple[int, ...], channels: int = 38, steps: int = 50, repeats: int = 5) -> dict[str, float]:
    torch.set_num_threads(1)
    names = [f"ch{i:02d}" for i in range(channels)]
    out: dict[str, float] = {}
    detector = None
    for k in ks:
        detector = fitted(k, 1, names, fit_steps=20)
        x = torch.from_numpy(synthetic(ROWS, N_MODES, channels, seed=3))  # raw: experts standardise themselves
        resp = torch.softmax(torch.randn(ROWS, k, generator=torch.Generator().manual_seed(0)), dim=1)
        for _ in range(20):
            detector.learner.step(x, resp)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(steps):
                detector.learner.step(x, resp)
            best = min(best, (time.perf_counter() - t0) / steps)
        out[f"step_ms_k{k}"] = round(best * 1e3, 3)
        detector.config.novelty.enabled = False
        batches = [synthetic(1024, N_MODES, channels, seed=10 + i) for i in range(6)]
        best = float("inf")
        for _ in range(repeats):
            scored = [detector.score_many(b) for b in batches]
            t0 = time.perf_counter()
            for s in scored:
                detector.learn_many(s)
            best = min(best, (time.perf_counter() - t0) / len(scored))
        out[f"learn_many_ms_k{k}"] = round(best * 1e3, 3)
    assert detector is not None
    new_mode = torch.from_numpy(synthetic(2000, 1, channels, seed=9))
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        _train_candidate(detector.model, new_mode, torch.Generator().manual_seed(0))
        best = min(best, time.perf_counter() - t0)
    out["candidate_s"] = round(best, 3)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="1,8,16", help="expert counts, comma-separated")
    args = parser.parse_args(argv)
    print(json.dumps(measure(tuple(int(k) for k in args.ks.split(",")))))


if __name__ == "__main__":
    main()
