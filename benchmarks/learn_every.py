"""Does amortising the experts' gradient step (ModelConfig.learn_every) cost quality? T2 series, fit once.

    python -m benchmarks.learn_every --max-series 4 --every 1,4

For each series the model is fitted once on X.train (as `streammoe bench --tracks T2`), then X.test is scored
with learning on from copies of that one model: once per `--every` value, plus learn_every=1 with another
sampling seed. The seed-to-seed difference is the noise the amortised runs are compared against.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.cli import _int_list, default_data_root
from benchmarks.metrics import series_metrics
from benchmarks.peers import StreamMoEPeer
from benchmarks.tracks import BenchOptions, load, t2_names
from streammoe.model.config import ModelConfig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-series", type=int, default=4, help="series per dataset (SMD, ASD)")
    ap.add_argument("--series", default=None, help="only series whose name contains this")
    ap.add_argument("--every", type=_int_list, default=(1, 4))
    ap.add_argument("--data-root", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None, help="JSON results (default: print only)")
    args = ap.parse_args(argv)

    import torch

    from streammoe.state.persistence import load_detector, save_detector

    torch.set_num_threads(1)
    config = ModelConfig(learn_every=1)
    opts = BenchOptions(args.data_root or default_data_root(), config, args.series, args.max_series, None, (), 256)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in t2_names(opts):
            train, test = load(opts.data_root / f"{name}.train.csv.gz"), load(opts.data_root / f"{name}.test.csv.gz")
            t0 = time.perf_counter()
            peer = StreamMoEPeer("streammoe", config)
            peer.fit(train.values)
            fit_s = time.perf_counter() - t0
            path = save_detector(peer.detector, Path(tmp) / name.replace("/", "-"))
            variants = [(n, 0) for n in args.every] + [(1, 1)]
            for every, seed in variants:
                peer.detector = load_detector(path)
                peer.detector.config.learn_every = every
                peer.detector.generator.manual_seed(config.seed + seed)
                t1 = time.perf_counter()
                scores = peer.score_many(test.values)
                m = series_metrics(test.labels, scores, peer.decide(scores))
                row = {
                    "series": name,
                    "learn_every": every,
                    "seed": seed,
                    "auc_pr": m["auc_pr"],
                    "f1": m["f1"],
                    "far": m["far"],
                    "steps": peer.detector.counters["steps"],
                    "score_s": time.perf_counter() - t1,
                    "fit_s": fit_s,
                }
                runs.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    lines = ["| learn_every | seed | mean AUC-PR | mean F1 | mean FAR | series |", "|---:|---:|---:|---:|---:|---:|"]
    for every, seed in [(n, 0) for n in args.every] + [(1, 1)]:
        sel = [r for r in runs if r["learn_every"] == every and r["seed"] == seed]
        lines.append(
            f"| {every} | {seed} | {np.mean([r['auc_pr'] for r in sel]):.3f} | {np.mean([r['f1'] for r in sel]):.3f} | "
            f"{np.mean([r['far'] for r in sel]):.4f} | {len(sel)} |"
        )
    print("\n".join(lines))
    if args.out:
        args.out.write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
