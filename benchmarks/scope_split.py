"""`python -m benchmarks.scope_split`: a worker's model stage when its batches split over many scopes, paired.

One 2048-record batch of the scale-out bench's K=8 machine (benchmarks/scaleout_calls.py) is split evenly over S
scopes held by S detectors, and each scope's rows are scored and learned (`score_many` + `learn_many`), as a worker
in `STREAMMOE_SCOPES__MODE=asset` does. Every `--min-rows` value (ModelConfig.learn_min_rows: 1 is a gradient step
on every call, as before that setting) gets its own detectors, loaded from one fitted model, and the variants run
batch by batch in alternating order in one process, so their ratios are paired; records/s is the median over
`--repeats` batches after two warm-up batches. The figure the scale-out goal names: records/s at S scopes against
one scope's, within the same variant and run.

    python -m benchmarks.scope_split --min-rows 1,64 --scopes 1,16,100 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.scaleout_calls import CHANNELS, fitted, score_learn_split, stream

K, BATCH = 8, 2048


def split_rates(
    min_rows: list[int], scopes: list[int], repeats: int, fit_steps: int, fit_rows: int = 20_000
) -> dict[int, dict[int, float]]:
    """Median records/s per (learn_min_rows, scopes)."""
    from streammoe.state.persistence import load_detector, save_detector

    x = stream(K)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_detector(fitted(K, fit_steps, fit_rows), Path(tmp) / "model")
        held = {
            (m, s): [load_detector(model_dir, channels=CHANNELS) for _ in range(s)] for m in min_rows for s in scopes
        }
    for (m, _), detectors in held.items():
        for d in detectors:
            d.config.learn_min_rows = m
    rates: dict[tuple[int, int], list[float]] = {key: [] for key in held}
    rng = np.random.default_rng(0)
    for r in range(repeats + 2):
        rows = x[(r * BATCH) % (len(x) - BATCH) :][:BATCH]
        for s in scopes:
            scope = rng.permutation(np.arange(BATCH) % s)  # an even split, in arrival order
            for m in min_rows if r % 2 == 0 else min_rows[::-1]:
                t0 = time.perf_counter()
                score_learn_split(held[(m, s)], rows, scope)
                if r >= 2:
                    rates[(m, s)].append(BATCH / (time.perf_counter() - t0))
    return {m: {s: statistics.median(rates[(m, s)]) for s in scopes} for m in min_rows}


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scope_split", description=__doc__.split("\n")[0])
    p.add_argument("--min-rows", type=lambda v: [int(i) for i in v.split(",")], default=[1, 64])
    p.add_argument("--scopes", type=lambda v: [int(i) for i in v.split(",")], default=[1, 16, 100])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--fit-steps", type=int, default=200)
    p.add_argument("--fit-rows", type=int, default=20_000)
    p.add_argument("--out", type=Path, default=None, help="also write the figures here as JSON")
    opts = p.parse_args(argv)
    import torch

    from streammoe.logs import configure_logging

    torch.set_num_threads(1)
    configure_logging("WARNING", "json")
    load = os.getloadavg()[0]
    rates = split_rates(opts.min_rows, opts.scopes, opts.repeats, opts.fit_steps, opts.fit_rows)
    setup = {"k": K, "batch": BATCH, "repeats": opts.repeats, "commit": _commit(), "load": [load, os.getloadavg()[0]]}
    for m, by_scopes in rates.items():
        one = by_scopes[opts.scopes[0]]
        cells = [f"{s} scopes {r:,.0f} rec/s ({r / one:.3f}x)" for s, r in by_scopes.items()]
        print(f"learn_min_rows={m}: " + ", ".join(cells))
    print(json.dumps(setup))
    if opts.out is not None:
        opts.out.write_text(json.dumps({"setup": setup, "records_s": rates}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
