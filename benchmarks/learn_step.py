"""What learning costs per batch: `learn_many` and `ExpertLearner.step` per K, and one new-expert candidate.

`streammoe bench --perf` times `learn_many` with the novelty memory on, where a candidate it trains can land in
one repeat and not the next. Here, one torch thread, best of repeats, printed as one JSON line: the step alone
(a fixed 320-row step: `learn_batch` 256 + 64 replayed, as the online learner sees it), `learn_many` with the
memory off (1024-record batches: the step, weights, calibration, replay, drift) and `_train_candidate` alone.
Run it from two trees alternately to compare a change against its parent in the same minutes:

    PYTHONPATH=/path/to/tree python -m benchmarks.learn_step --ks 1,8,16

`--min-resp 0,0.01` adds the step on the records' scored responsibilities and learn_many at each
`learn_min_resp` (model/sparse.py), in the same run.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from benchmarks.workload import N_MODES, fitted, synthetic
from streammoe.model.detector import MixtureDetector
from streammoe.novelty.growth import _train_candidate

ROWS = 320


def measure(
    ks: tuple[int, ...], channels: int = 38, steps: int = 50, repeats: int = 5, min_resps: tuple[float, ...] = ()
) -> dict[str, float]:
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
        out[f"step_ms_k{k}"] = step_ms(detector, x, resp, steps, repeats)
        detector.config.novelty.enabled = False
        batches = [synthetic(1024, N_MODES, channels, seed=10 + i) for i in range(6)]
        out[f"learn_many_ms_k{k}"] = learn_many_ms(detector, batches, repeats)
        for min_resp in min_resps:
            out.update(sparse_figures(detector, x, batches, min_resp, steps, repeats))
    assert detector is not None
    new_mode = torch.from_numpy(synthetic(2000, 1, channels, seed=9))
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        _train_candidate(detector.model, new_mode, torch.Generator().manual_seed(0))
        best = min(best, time.perf_counter() - t0)
    out["candidate_s"] = round(best, 3)
    return out


def step_ms(detector: MixtureDetector, x: torch.Tensor, resp: torch.Tensor, steps: int, repeats: int) -> float:
    """The best of `repeats` mean times of `steps` learning steps on (x, resp), in ms."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            detector.learner.step(x, resp)
        best = min(best, (time.perf_counter() - t0) / steps)
    return round(best * 1e3, 3)


def learn_many_ms(detector: MixtureDetector, batches: list, repeats: int) -> float:
    """The best of `repeats` mean times of `learn_many` over the scored batches (scoring not timed), in ms."""
    best = float("inf")
    for _ in range(repeats):
        scored = [detector.score_many(b) for b in batches]
        t0 = time.perf_counter()
        for s in scored:
            detector.learn_many(s)
        best = min(best, (time.perf_counter() - t0) / len(scored))
    return round(best * 1e3, 3)


def sparse_figures(
    detector: MixtureDetector, x: torch.Tensor, batches: list, min_resp: float, steps: int, repeats: int
) -> dict:
    """The step on the records' own responsibilities (as scored, not the random ones above) and learn_many, with
    `ModelConfig.learn_min_resp` at `min_resp` (model/sparse.py; 0: dense)."""
    k, before = detector.config.k_max, detector.config.learn_min_resp
    detector.config.learn_min_resp = min_resp
    resp = torch.as_tensor(detector.score_many(x.numpy()).responsibilities)
    out = {
        f"step_scored_ms_k{k}_r{min_resp:g}": step_ms(detector, x, resp, steps, repeats),
        f"learn_many_ms_k{k}_r{min_resp:g}": learn_many_ms(detector, batches, repeats),
    }
    detector.config.learn_min_resp = before
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="1,8,16", help="expert counts, comma-separated")
    parser.add_argument(
        "--min-resp",
        default="",
        help="also the step and learn_many at these learn_min_resp (e.g. 0,0.01), comma-separated",
    )
    args = parser.parse_args(argv)
    min_resps = tuple(float(v) for v in args.min_resp.split(",") if v)
    print(json.dumps(measure(tuple(int(k) for k in args.ks.split(",")), min_resps=min_resps)))


if __name__ == "__main__":
    main()
