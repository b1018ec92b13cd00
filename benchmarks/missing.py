"""False alarms of normal records with channels missing, against the same records complete.

For each data set: fit on normal training data, then score held-out normal records (no learning) in batches, once
complete and once with `n` channels masked (a random pattern per batch, as a gateway dropping some readings
would), and compare the rates of p < 1e-3 and p < 1e-2. The masked records are judged like with like
(streammoe/model/partial.py); `naive` beside them judges the masked NLL against the full-dimension calibration,
which is what the like-with-like judgement replaces.

    OMP_NUM_THREADS=1 python -m benchmarks.missing [--seeds 0 1] [--missing 1 2 5] [--sets machine process smd]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from streammoe.model.config import ModelConfig
from streammoe.model.detector import MixtureDetector

LEVELS = (1e-3, 1e-2)
BATCH = 256


def machine_set(seed: int) -> tuple[str, np.ndarray, np.ndarray]:
    """The tests' synthetic machine: two modes, eight correlated channels."""
    from streammoe.testing.machine import Machine

    m = Machine(8, modes=2, factors=3, spread=4.0)
    rng = np.random.default_rng(seed)
    return "machine (2 modes, 8 channels)", m.rows(rng, 4000), m.rows(rng, 8192)


def process_set(seed: int) -> tuple[str, np.ndarray, np.ndarray]:
    """The multi-mode process simulator: fit on three modes' normal runs, score their normal test runs."""
    from streammoe.testing.process import simulate

    train = np.concatenate([simulate(m, 2000, seed=100 * seed + m).values for m in (0, 1, 2)])
    test = np.concatenate([simulate(m, 2731, seed=100 * seed + 50 + m).values for m in (0, 1, 2)])
    return "process simulator (3 modes, 46 channels)", train, test


def smd_set(seed: int, root: Path) -> tuple[str, np.ndarray, np.ndarray] | None:
    """SMD machine-1-2: fit on its train part, score the normal rows of its test part (seed unused)."""
    from streammoe.files.series import read_series

    path = root / "smd" / "machine-1-2.train.csv.gz"
    if not path.is_file():
        return None
    test = read_series(root / "smd" / "machine-1-2.test.csv.gz")
    normal = test.values[test.labels == 0] if test.labels is not None else test.values
    return "SMD machine-1-2 (38 channels, test normal rows)", read_series(path).values, normal


def measure(name: str, train: np.ndarray, test: np.ndarray, seed: int, n_missing: Sequence[int]) -> dict:
    det = MixtureDetector(train.shape[1], ModelConfig(seed=seed), device="cpu")
    det.fit(train)
    rng = np.random.default_rng(seed + 1000)
    out: dict = {"set": name, "seed": seed, "records": len(test), "experts": det.model.n_active, "rows": []}
    for n in (0, *n_missing):
        masked, naive = [], []
        t0 = time.perf_counter()
        for start in range(0, len(test), BATCH):
            batch = test[start : start + BATCH]
            missing = np.zeros(batch.shape, bool)
            if n:
                missing[:, rng.choice(batch.shape[1], n, replace=False)] = True
            scored = det.score_many(batch, missing=missing if n else None)
            masked.append(scored.log_p_value)
            mode = torch.as_tensor(scored.mode).clamp(min=0)
            naive.append(det.model.calibration.log_p_value(mode, torch.as_tensor(scored.nll)).numpy())
        seconds = time.perf_counter() - t0
        lp, lpn = np.concatenate(masked), np.concatenate(naive)
        row = {"missing": n, "seconds": round(seconds, 2)}
        for level in LEVELS:
            row[f"far@{level:g}"] = round(float(np.mean(lp < np.log(level))), 5)
            row[f"naive@{level:g}"] = round(float(np.mean(lpn < np.log(level))), 5)
        out["rows"].append(row)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.cli import default_data_root

    p = argparse.ArgumentParser(prog="python -m benchmarks.missing", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--missing", type=int, nargs="+", default=[1, 2, 5])
    p.add_argument("--sets", nargs="+", default=["machine", "process", "smd"])
    p.add_argument("--data-root", type=Path, default=None, help="default: $STREAMMOE_DATA or ../shared/datasets")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    root = args.data_root or default_data_root()
    for seed in args.seeds:
        for which in args.sets:
            data = {"machine": machine_set, "process": process_set}[which](seed) if which != "smd" else None
            if which == "smd":
                data = smd_set(seed, root)
                if data is None:
                    print(f"smd: no data under {root}, skipped", file=sys.stderr)
                    continue
            print(json.dumps(measure(*data, seed=seed, n_missing=args.missing)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
