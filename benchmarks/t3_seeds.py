"""T3 for our model alone, per seed, one torch thread: how far a change moves the new-mode false alarms.

`streammoe bench --tracks T3` is the protocol's run (peers beside, two threads, one seed). The seed changes the
fit and moves T3's false alarms far more than most changes do (0.07-0.26 across seeds 0-2 at one setting), so
a change is weighed here over several seeds first. Each pair's fit on a.train is cached per seed under --cache
and reused by every setting that changes only how the model learns online; a --set of a field the fit uses
(FIT_FIELDS: fit_steps, k_max, ...) gets its own cached fit. b is scored as the daemon scores
(with `ModelConfig.cascade` when it is enabled):

    python -m benchmarks.t3_seeds --seeds 0,1,2 --set novelty.settle_records=0
    python -m benchmarks.t3_seeds --seeds 0,1,2 --set cascade.enabled=true --set learn_min_resp=0.01
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from benchmarks.cli import default_data_root
from benchmarks.demo_faults import with_settings
from benchmarks.metrics import auc_pr
from benchmarks.tracks import T3_PAIRS, load
from streammoe.files.offline import score_stream
from streammoe.model.config import ModelConfig
from streammoe.model.detector import MixtureDetector
from streammoe.state.persistence import load_detector, save_detector

FIT_FIELDS = {
    "k_max",
    "hidden",
    "latent",
    "fit_steps",
    "fit_batch",
    "min_expert_weight",
    "k_tolerance",
    "holdout_blocks",
    "holdout_guard",
    "holdout_share",
    "holdout_rows",
}


def fitted(data_root: Path, a: str, seed: int, cache: Path, fit_sets: list[str] | None = None) -> MixtureDetector:
    """The default model with `fit_sets` fitted on a.train with `seed`, from the cache when it was fitted before."""
    fit_sets = sorted(fit_sets or [])
    path = cache / "-".join([f"{a}-seed{seed}", *fit_sets])
    if not path.exists():
        torch.manual_seed(seed)
        x = load(data_root / f"smd/{a}.train.csv.gz").values
        det = MixtureDetector(x.shape[1], with_settings(ModelConfig(seed=seed), fit_sets), device="cpu")
        det.fit(x[np.isfinite(x).all(axis=1)])
        save_detector(det, path, durable=False)
    return load_detector(path, device="cpu")


def run_pair(data_root: Path, a: str, b: str, seed: int, sets: list[str], cache: Path) -> dict:
    """Stream b.train then b.test through the fit on a.train (made with the `sets` of FIT_FIELDS), learning, with
    `sets` applied to how it learns."""
    if "seed" in {s.partition("=")[0] for s in sets}:
        raise ValueError("--set may not change the seed: give --seeds")
    det = fitted(data_root, a, seed, cache, [s for s in sets if s.partition("=")[0] in FIT_FIELDS])
    cfg = with_settings(det.config, sets)
    det.config = det.model.config = cfg
    det.model.memory.cfg = cfg.novelty
    b_train, b_test = load(data_root / f"smd/{b}.train.csv.gz"), load(data_root / f"smd/{b}.test.csv.gz")
    n = len(b_train.values)
    torch.manual_seed(seed)
    values = np.concatenate([b_train.values, b_test.values])
    result, det = score_stream(values, det, det.channels, cascade=cfg.cascade.enabled)
    flagged = result.is_anomaly.astype(bool)
    labels = b_test.labels if b_test.labels is not None else np.zeros(len(b_test.values), np.int8)
    return {
        "far_b_train_2nd_half": round(float(flagged[n // 2 : n].mean()), 4),
        "auc_pr_b_test": round(auc_pr(labels, result.score[n:]), 3) if labels.any() else None,
        "experts": int(det.model.n_active),
        "unlocks": det.counters["unlocks"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2", help="comma list of model seeds")
    p.add_argument("--set", action="append", default=[], help="ModelConfig override, e.g. novelty.settle_records=0")
    p.add_argument("--data-root", type=Path, default=None, help="default: $STREAMMOE_DATA or ../shared/datasets")
    p.add_argument(
        "--pairs",
        default=",".join(str(i) for i in range(len(T3_PAIRS))),
        help=f"comma list of indices into {[f'{a}->{b}' for a, b in T3_PAIRS]}",
    )
    p.add_argument("--cache", type=Path, default=Path("results/t3-seeds-fits"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data_root = args.data_root or default_data_root()
    chosen = [T3_PAIRS[int(i)] for i in args.pairs.split(",")]
    for seed in (int(s) for s in args.seeds.split(",")):
        pairs = {f"{a}->{b}": run_pair(data_root, a, b, seed, args.set, args.cache) for a, b in chosen}
        mean = float(np.mean([r["far_b_train_2nd_half"] for r in pairs.values()]))
        print(
            json.dumps({"seed": seed, "set": args.set, "mean_far_b_train_2nd_half": round(mean, 4), "pairs": pairs}),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
