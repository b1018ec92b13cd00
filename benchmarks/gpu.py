"""Scoring on a GPU: records/s at K=16 for batches up to 65,536, per precision, and whether decisions change.

Issue 8's GPU goal is >= 1M records/s scoring at K=16. On the device the detector picks (CUDA when torch sees
one), a K-expert model is fitted as the perf bench fits it (`workload.fitted`, its 16-mode synthetic machine), then
for every S and batch size:

- score: `score_many` on host rows (the daemon's call: copy in through pinned memory, E-step, calibration,
  one synchronisation, copy out), median of repeats;
- E-step: `model.evaluate` alone on rows already on the device, synchronised, median of repeats;
- learn: `learn_many` on the scored batch (float32 only);
- decisions: share of records whose alert decision equals float32's, same noise (the generator is reseeded).

    python -m benchmarks.gpu --out results/gpu            # on a GPU host; ~2 min on an H200
    python -m benchmarks.gpu --batches 1024 --repeats 3   # a dry run on a CPU

Writes gpu.json and gpu.md under --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.workload import ANOMALY_SHIFT, N_MODES, fitted, synthetic
from streammoe.model.detector import default_device

NOISE_SEED = 1234


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_rate(fn: Callable[[], object], rows: int, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return rows / statistics.median(times)


def measure(
    k: int = 16,
    samples: tuple[int, ...] = (1, 8),
    batches: tuple[int, ...] = (1024, 4096, 16384, 65536),
    precisions: tuple[str, ...] = ("float32", "bfloat16", "float16"),
    channels: int = 38,
    repeats: int = 10,
    fit_steps: int = 300,
    device: str | None = None,
    progress: Callable[[str], object] = print,
) -> dict:
    dev = torch.device(device) if device else default_device()
    if dev.type != "cuda":
        precisions = tuple(p for p in precisions if p != "float16")  # float16 autocast needs a GPU
    t0 = time.perf_counter()
    detector = fitted(k, 1, [f"ch{i:02d}" for i in range(channels)], fit_steps, device=str(dev))
    fit_s = time.perf_counter() - t0
    rows = synthetic(max(batches), N_MODES, channels, seed=2)
    planted = np.random.default_rng(2).random(len(rows)) < 0.01
    rows[planted, 0] += ANOMALY_SHIFT
    results = []
    for s in samples:
        detector.config.n_samples = s
        for b in batches:
            x = rows[:b]
            x_dev = torch.from_numpy(x).to(dev)  # raw: experts standardise themselves
            reference = None
            for precision in precisions:
                detector.accelerate(precision=precision)
                for _ in range(2):  # warm-up: allocator, kernels, autocast caches
                    detector.score_many(x)
                score = _median_rate(lambda x=x: detector.score_many(x), b, repeats, dev)
                with torch.inference_mode():
                    estep = _median_rate(
                        lambda x_dev=x_dev, s=s: detector.model.evaluate(x_dev, s, detector.generator), b, repeats, dev
                    )
                detector.generator.manual_seed(NOISE_SEED)
                flags = detector.score_many(x).is_anomaly
                reference = flags if reference is None else reference
                row = {
                    "s": s,
                    "batch": b,
                    "precision": precision,
                    "score_rec_s": score,
                    "estep_rec_s": estep,
                    "same_decision": float((flags == reference).mean()),
                    "planted_flagged": float(flags[planted[:b]].mean()) if planted[:b].any() else None,
                    "others_flagged": float(flags[~planted[:b]].mean()),
                }
                if precision == "float32":  # on a copy: learning must not change what the other precisions score
                    learner = copy.deepcopy(detector)
                    scored = learner.score_many(x)
                    row["learn_rec_s"] = _median_rate(
                        lambda learner=learner, scored=scored: learner.learn_many(scored), b, max(3, repeats // 3), dev
                    )
                results.append(row)
                progress(
                    f"gpu: S={s} batch={b} {precision}: score {score:,.0f} rec/s, E-step {estep:,.0f} rec/s, "
                    f"same decisions {row['same_decision']:.4f}"
                )
    detector.accelerate()
    chunk_rows = {}
    for s in samples:
        detector.config.n_samples = s
        chunk_rows[str(s)] = detector.model.chunk_rows()
    setup = {
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "k": k,
        "k_active": detector.model.n_active,
        "channels": channels,
        "fit_steps": fit_steps,
        "fit_s": round(fit_s, 1),
        "repeats": repeats,
        "chunk_rows": chunk_rows,
    }
    return {"setup": setup, "runs": results}


def markdown(result: dict) -> str:
    st = result["setup"]
    lines = [
        f"## Scoring on {st['device_name']} (`python -m benchmarks.gpu`)",
        "",
        (
            f"K={st['k']} ({st['k_active']} active), {st['channels']} channels, torch {st['torch']}, median of "
            f"{st['repeats']} calls; rows per E-step pass by S: {st['chunk_rows']}."
        ),
        "",
        (
            "| S | batch | precision | score rec/s | E-step rec/s | learn rec/s | same decision as float32 "
            "| planted flagged | others flagged |"
        ),
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["runs"]:
        learn = f"{r['learn_rec_s']:,.0f}" if "learn_rec_s" in r else ""
        planted = f"{r['planted_flagged']:.3f}" if r["planted_flagged"] is not None else ""
        lines.append(
            f"| {r['s']} | {r['batch']} | {r['precision']} | {r['score_rec_s']:,.0f} | "
            f"{r['estep_rec_s']:,.0f} | {learn} | {r['same_decision']:.4f} | {planted} | "
            f"{r['others_flagged']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--samples", type=_ints, default=(1, 8))
    parser.add_argument("--batches", type=_ints, default=(1024, 4096, 16384, 65536))
    parser.add_argument("--precisions", default="float32,bfloat16,float16")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--fit-steps", type=int, default=300)
    parser.add_argument("--device", default=None, help="default: cuda when torch sees one, else cpu")
    parser.add_argument("--out", type=Path, default=Path("results/gpu"))
    args = parser.parse_args(argv)
    result = measure(
        args.k,
        args.samples,
        args.batches,
        tuple(args.precisions.split(",")),
        repeats=args.repeats,
        fit_steps=args.fit_steps,
        device=args.device,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(result, indent=1))
    (args.out / "gpu.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
