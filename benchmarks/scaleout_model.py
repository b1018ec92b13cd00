"""`python -m benchmarks.scaleout_model`: the figures behind docs/scaleout.md (the scale-out capacity model).

Measured in one run, on one torch thread (as the daemon runs), for K experts (k_max = K, all K active after a fit on
K-mode synthetic data, 38 channels, the cascade off so every record gets the full pass, every other ModelConfig
field at its default):

1. cost   - seconds per `score_many` + `learn_many` call against rows per call (8 .. 2048), with a straight line
            fixed + per_row * rows fitted to the medians as a summary; then one 2048-record batch split evenly
            over S scopes, run on S detectors and on one detector called S times, against `worker_rate`'s
            prediction; and, for the largest K, the per-call cost with learn_every 4 and with n_samples 1.
2. memory - RSS growth of a fresh process that holds N detectors (loaded from a model directory as a restore
            does, then one score + learn each, so Adam's state and the scoring buffers exist), MB per scope.
3. snapshot - `snapshot.pack` / `unpack` size and time per scope; with `--broker`, on an embedded Tansu broker,
            `SnapshotWriter.write` and `read_latest` times for N scopes in a one-partition topic, and the read
            time of one partition whose log holds several rounds of snapshots (Tansu never compacts).

`capacity()` (benchmarks/scaleout_capacity.py) is the model itself (pure arithmetic on those figures); `--plan`
prints it for a deployment. The measurements are in scaleout_calls.py (1) and scaleout_state.py (2, 3), the table in
scaleout_table.py. The table goes to stdout; everything measured to <out>/scaleout.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from benchmarks.scaleout_calls import CHANNELS, fitted, levers, split_check, stream, time_calls
from benchmarks.scaleout_capacity import Deployment, capacity, figures_from, line_fit, worker_rate
from benchmarks.scaleout_state import broker_snapshots, memory, pack_unpack
from benchmarks.scaleout_table import table


def run(opts: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(opts.torch_threads)
    from streammoe.logs import configure_logging
    from streammoe.state.persistence import save_detector

    configure_logging("WARNING", "json")
    result: dict = {
        "setup": {
            "channels": len(CHANNELS),
            "ks": opts.ks,
            "sizes": opts.sizes,
            "repeats": opts.repeats,
            "fit_steps": opts.fit_steps,
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "split_batch": opts.split_batch,
            "split_scopes": opts.split_scopes,
            "memory_scopes": opts.memory_scopes,
            "broker_scopes": opts.broker_scopes if opts.broker else None,
            "rounds": opts.rounds,
            "model": "k_max=K, all K experts active, the cascade off (every record on the full pass), other "
            "ModelConfig fields at their defaults (n_samples=8, learn_every=1, learn_batch=256, novelty on)",
        },
        "k": {},
    }
    broker = None
    if opts.broker:
        from streammoe.testing.broker import EmbeddedBroker

        broker = EmbeddedBroker().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for k in opts.ks:
                r: dict = {}
                t0 = time.perf_counter()
                detector = fitted(k, opts.fit_steps)
                r["fit_s"] = time.perf_counter() - t0
                x = stream(k)
                model_dir = save_detector(detector, Path(tmp) / f"k{k}")
                np.save(model_dir / "rows.npy", x[:64])
                calls = time_calls(detector, x, opts.sizes, opts.repeats)
                r["during_timing"] = calls.pop("during_timing")
                r["calls"] = calls
                fixed, per_row = line_fit(list(calls), [c["total_ms"] / 1e3 for c in calls.values()])
                r["line"] = {"fixed_ms": fixed * 1e3, "per_row_us": per_row * 1e6}
                points = {b: c["total_ms"] / 1e3 for b, c in calls.items()}
                split = split_check(model_dir, detector, x, opts.split_batch, opts.split_scopes, opts.split_repeats)
                for s in split:
                    s["predicted_records_s"] = worker_rate(points, opts.split_batch, s["scopes"])
                if k == max(opts.ks):
                    r["levers"] = levers(detector, x, opts.lever_sizes, opts.repeats)
                r["split"] = split
                r["memory"] = memory(model_dir, opts.memory_scopes)
                r["snapshot"] = pack_unpack(detector, opts.pack_repeats)
                if broker is not None:
                    r["broker"] = broker_snapshots(
                        broker.bootstrap,
                        detector,
                        k,
                        opts.broker_scopes,
                        opts.rounds if k == max(opts.ks) else 1,
                        opts.rounds_scopes,
                    )
                result["k"][k] = r
                print(f"K={k} measured", flush=True)
    finally:
        if broker is not None:
            broker.stop()
    return result


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaleout_model", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("results/scaleout"))
    p.add_argument("--ks", type=_ints, default=[1, 4, 8], help="experts K (k_max = K, all active)")
    p.add_argument("--sizes", type=_ints, default=[8, 32, 128, 512, 2048], help="rows per score+learn call")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds over the sizes")
    p.add_argument("--fit-steps", type=int, default=200)
    p.add_argument("--split-batch", type=int, default=2048)
    p.add_argument("--split-scopes", type=_ints, default=[1, 16, 100])
    p.add_argument("--split-repeats", type=int, default=5)
    p.add_argument("--memory-scopes", type=_ints, default=[1, 10, 50])
    p.add_argument("--pack-repeats", type=int, default=7)
    p.add_argument(
        "--broker",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time SnapshotWriter.write / read_latest on an embedded Tansu broker",
    )
    p.add_argument("--broker-scopes", type=_ints, default=[1, 10, 50])
    p.add_argument("--lever-sizes", type=_ints, default=[8, 32, 128], help="rows per call for the settings levers")
    p.add_argument(
        "--rounds", type=int, default=8, help="snapshot rounds written for the uncompacted-log read (largest K)"
    )
    p.add_argument("--rounds-scopes", type=int, default=10, help="scopes in the uncompacted-log read")
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--table", type=Path, default=None, help="only print the table of an earlier scaleout.json")
    plan = p.add_argument_group("--plan: the capacity model on the figures of --table FILE")
    plan.add_argument("--plan", action="store_true")
    plan.add_argument("--plan-k", type=int, default=8)
    plan.add_argument("--workers", type=int, default=100)
    plan.add_argument("--scopes", type=int, default=10_000)
    plan.add_argument("--partitions", type=_ints, default=[100, 200])
    plan.add_argument("--batch", type=_ints, default=[1024, 2048])
    plan.add_argument("--interval-s", type=float, default=60.0)
    opts = p.parse_args(argv)
    if opts.table is not None:
        result = json.loads(opts.table.read_text())
        if not opts.plan:
            print(table(result))
            return 0
        figures = figures_from(result, opts.plan_k)
        for parts in opts.partitions:
            for batch in opts.batch:
                got = capacity(Deployment(opts.workers, opts.scopes, parts, batch, opts.interval_s), figures)
                print(json.dumps(asdict(got)))
        return 0
    t0, load = time.perf_counter(), os.getloadavg()[0]
    result = run(opts)
    result["setup"]["wall_s"] = time.perf_counter() - t0
    result["setup"]["load_average_1min"] = [load, os.getloadavg()[0]]  # start, end: the box is shared
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "scaleout.json").write_text(json.dumps(result, indent=2))
    print(table(json.loads(json.dumps(result))))
    print(
        f"\nwritten {opts.out / 'scaleout.json'} ({result['setup']['wall_s']:.0f} s, load average "
        f"{result['setup']['load_average_1min'][0]:.1f} -> {result['setup']['load_average_1min'][1]:.1f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
