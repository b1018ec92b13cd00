"""`python -m benchmarks.cascade`: how often the cascade's decisions differ from the full pass's.

Every batch of a stream is scored twice from the same model state and the same generator state: once with every
record on the full S-sample pass, once through the cascade (model/cascade.py). Both decisions that matter are
compared, the alert (p < threshold) and the learn decision (p >= learn_threshold, which also decides what enters
the new-mode memory); the model then learns from the cascade's batch, as the daemon would. Streams: the perf
bench's synthetic machine with planted anomalies of every size (so many land near the threshold), SKAB files as
T1 runs them (first 400 rows fitted), SMD series as T2 does (fit on train, score test).

    python -m benchmarks.cascade --margins 0.05,0.1,0.2 --skab 6 --smd machine-1-2
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from streammoe.model.cascade import first_pass, needs_full_pass
from streammoe.model.config import ModelConfig
from streammoe.model.detector import MixtureDetector


@dataclass
class Paired:
    """Counts at one margin over a stream. A miss is a record the screen cleared (so the cascade judged it normal
    and learnable) that the full pass alerts on (`alert_miss`) or refuses to learn (`learn_miss`)."""

    records: int = 0
    rescored: int = 0
    alert_miss: int = 0
    learn_miss: int = 0
    alerts_full: int = 0

    def add(self, other: Paired) -> Paired:
        return Paired(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values())))


@dataclass
class StreamRun:
    at: dict[float, Paired] = field(default_factory=dict)
    inside_diff: int = 0  # decisions that differ on rows the cascade rescored: must be 0
    full_s: float = 0.0
    cascade_s: float = 0.0


def paired_stream(detector: MixtureDetector, values: np.ndarray, batch_size: int, margins: list[float]) -> StreamRun:
    """Score `values` batch by batch with the full pass and through the cascade (same model and noise), count
    at every margin what the screen would miss, learn from the cascade's result (at the configured margin)."""
    cfg, model = detector.config, detector.model
    lt = math.log(cfg.learn_threshold)
    run = StreamRun({m: Paired() for m in margins})
    for start in range(0, len(values), batch_size):
        batch = values[start : start + batch_size]
        refs = np.arange(start, start + len(batch))
        state = detector.generator.get_state()
        cfg.cascade.enabled = False
        t0 = time.perf_counter()
        full = detector.score_many(batch, refs=refs)
        t1 = time.perf_counter()
        detector.generator.set_state(state)
        cfg.cascade.enabled = True
        cas = detector.score_many(batch, refs=refs)
        t2 = time.perf_counter()
        run.full_s += t1 - t0
        run.cascade_s += t2 - t1
        assert cas.rescored is not None
        inside = cas.rescored.cpu().numpy()
        refused = ~full.valid | ~full.in_range | (full.log_p_value < lt)
        cas_refused = ~cas.valid | ~cas.in_range | (cas.log_p_value < lt)
        run.inside_diff += int(((full.is_anomaly != cas.is_anomaly) | (refused != cas_refused))[inside].sum())
        xt = torch.as_tensor(batch, device=detector.device)
        valid = torch.isfinite(xt).all(1)
        xt = torch.where(valid[:, None], xt, torch.zeros_like(xt))
        must = ~valid | detector.limits.poisoned(xt)
        detector.generator.set_state(state)
        first = first_pass(model, xt, model.draw_noise(xt, cfg.n_samples, detector.generator))
        for m in margins:
            cfg.cascade.margin_p = m
            cleared = (~needs_full_pass(model, first, cfg.n_samples, must)).cpu().numpy()
            run.at[m] = run.at[m].add(
                Paired(
                    len(batch),
                    int((~cleared).sum()),
                    int((cleared & full.is_anomaly).sum()),
                    int((cleared & refused).sum()),
                    int(full.is_anomaly.sum()),
                )
            )
        cfg.cascade.margin_p = margins[0]
        detector.learn_many(cas)
    return run


def synthetic_run(margins: list[float], seed: int, records: int, k: int, s: int) -> StreamRun:
    """The perf bench's 16-mode machine, 38 channels; 2 % of records shifted on one channel by 0-30 spreads."""
    from benchmarks.workload import N_MODES, synthetic

    config = ModelConfig(k_max=k, n_samples=s, fit_steps=400, min_expert_weight=0.0, seed=seed)
    config.cascade.margin_p = margins[0]
    det = MixtureDetector(38, config)
    det.fit(synthetic(20_000, N_MODES, 38, seed=1), k=k)
    x = synthetic(records, N_MODES, 38, seed=10 + seed)
    rng = np.random.default_rng(seed)
    planted = rng.random(len(x)) < 0.02
    ch = rng.integers(0, 38, len(x))
    spread = x.std(0)
    x[planted, ch[planted]] += rng.uniform(0, 30, planted.sum()) * spread[ch[planted]] / 4
    return paired_stream(det, x.astype(np.float32), 1024, margins)


def file_run(margins: list[float], train: np.ndarray, test: np.ndarray, seed: int = 0) -> StreamRun:
    config = ModelConfig(seed=seed)
    config.cascade.margin_p = margins[0]
    det = MixtureDetector(train.shape[1], config)
    det.fit(train[np.isfinite(train).all(1)])
    return paired_stream(det, test, 256, margins)


def main() -> None:
    from streammoe.files.series import read_series

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--margins", default="0.05,0.1,0.2")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--records", type=int, default=50_000)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--s", type=int, default=8)
    ap.add_argument("--skab", type=int, default=0, help="the first N SKAB files of each T1 group")
    ap.add_argument("--smd", default="", help="comma-separated SMD series (fit on train, score test)")
    ap.add_argument("--data", type=Path, default=Path(__file__).parents[1] / ".." / "shared" / "datasets")
    ap.add_argument("--no-synthetic", action="store_true")
    args = ap.parse_args()
    margins = [float(m) for m in args.margins.split(",")]
    for seed in (int(v) for v in args.seeds.split(",")):
        runs: dict[str, StreamRun] = {}
        if not args.no_synthetic:
            runs["synthetic"] = synthetic_run(margins, seed, args.records, args.k, args.s)
            report("synthetic", seed, runs["synthetic"])
        for group in ("valve1", "valve2", "other") if args.skab else ():
            for path in sorted((args.data / "skab" / group).glob("*.csv.gz"))[: args.skab]:
                v = read_series(path).values
                name = f"skab/{group}/{path.name}"
                runs[name] = file_run(margins, v[:400], v[400:], seed)
                report(name, seed, runs[name])
        for name in filter(None, args.smd.split(",")):
            train = read_series(args.data / "smd" / f"{name}.train.csv.gz").values
            test = read_series(args.data / "smd" / f"{name}.test.csv.gz").values
            runs[f"smd/{name}"] = file_run(margins, train, test, seed)
            report(f"smd/{name}", seed, runs[f"smd/{name}"])
        for prefix in ("skab", "smd", ""):
            chosen = [r for n, r in runs.items() if n.startswith(prefix)]
            if chosen:
                total = StreamRun({m: Paired() for m in margins})
                for r in chosen:
                    total.at = {m: total.at[m].add(r.at[m]) for m in margins}
                    total.inside_diff += r.inside_diff
                    total.full_s += r.full_s
                    total.cascade_s += r.cascade_s
                report(f"total {prefix or 'all'}", seed, total)


def report(stream: str, seed: int, run: StreamRun) -> None:
    at = {str(m): asdict(p) for m, p in run.at.items()}
    line = {"stream": stream, "seed": seed, "inside_diff": run.inside_diff, "full_s": round(run.full_s, 2)}
    print(json.dumps({**line, "cascade_s": round(run.cascade_s, 2), "at": at}), flush=True)


if __name__ == "__main__":
    main()
