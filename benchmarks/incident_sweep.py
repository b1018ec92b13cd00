"""Incident settings against event-level metrics: every method's T1/T2 decisions, each grouped under several
incident settings and by gaps under 10 rows, pooled per dataset.

A method's decisions do not depend on the incident settings, so each (series, method) is run once and its
decisions are kept in `--cache` (one .npz each: labels, flagged, scores, the -log10 p-values `neg_log10_p` for
the evidence rule, critical, at_once, mode_added); later sweeps over other settings read them back. A cache
written before `neg_log10_p` was kept gives the evidence rule nothing to count: make a new one for it.

    python -m benchmarks.incident_sweep --cache results/decisions --sweep quiet_records=30,60,100,200
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from benchmarks.events import EventCounts, event_counts
from benchmarks.tracks import (
    METHODS,
    T1_GROUPS,
    WARMUP,
    BenchOptions,
    FitCache,
    _extras,
    _run,
    load,
    make_peer,
    natural_key,
    t2_names,
)
from streammoe.incidents import IncidentSettings
from streammoe.model.config import ModelConfig

COLUMNS = (
    "segment_recall",
    "false_per_10k",
    "per_detected_segment",
    "median_delay",
    "normal_inside",
    "normal_flagged",
    "incidents",
)


def _t1_names(opts: BenchOptions) -> list[str]:
    root = opts.data_root / "skab"
    return [
        f"skab/{g}/{p.name.removesuffix('.csv.gz')}"
        for g in T1_GROUPS
        for p in sorted((root / g).glob("*.csv.gz"), key=lambda p: natural_key(p.name))
    ]


def decisions(opts: BenchOptions, tracks: list[str], cache_dir: Path) -> Iterator[tuple[str, str, dict]]:
    """(dataset, method, arrays) for every series and method; runs the method only when not cached."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    fits = FitCache()
    jobs = [("T1", n) for n in _t1_names(opts)] * ("T1" in tracks) + [("T2", n) for n in t2_names(opts)] * (
        "T2" in tracks
    )
    try:
        for track, name in jobs:
            for m in opts.methods or METHODS:
                path = cache_dir / f"{name.replace('/', '__')}__{m}.npz"
                if not path.exists():
                    _decide(opts, track, name, m, fits, path)
                with np.load(path) as d:
                    yield name.split("/")[0], m, {k: d[k] for k in d.files}
    finally:
        fits.close()


def _decide(opts: BenchOptions, track: str, name: str, method: str, fits: FitCache, path: Path) -> None:
    if track == "T1":
        s = load(opts.data_root / f"{name}.csv.gz")
        train, stream, labels = s.values[:WARMUP], s.values[WARMUP:], s.labels[WARMUP:]  # type: ignore[index]
        times = (s.timestamps[:WARMUP], s.timestamps[WARMUP:])
        peer = make_peer(method, opts, None)
    else:
        fit, test = load(opts.data_root / f"{name}.train.csv.gz"), load(opts.data_root / f"{name}.test.csv.gz")
        train, stream, labels, times = fit.values, test.values, test.labels, (fit.timestamps, test.timestamps)
        peer = make_peer(method, opts, fits)
    scores, flagged, _, _ = _run(peer, train, stream, times)
    ex = _extras(peer)
    print(f"  decided {name} {method}", file=sys.stderr, flush=True)
    np.savez_compressed(
        path,
        labels=labels,
        flagged=flagged,
        scores=scores,
        neg_log10_p=ex.calibrated_score if ex.calibrated_score is not None else np.zeros(len(flagged)),
        critical=ex.critical if ex.critical is not None else np.zeros(len(flagged), bool),
        at_once=ex.at_once if ex.at_once is not None else np.zeros(len(flagged), bool),
        mode_added=np.asarray(ex.mode_added, np.int64).reshape(-1, 3),
    )


def sweep(opts: BenchOptions, tracks: list[str], cache_dir: Path, grid: list[dict]) -> dict:
    """{(dataset, method, setting label): EventCounts}, the gap10 grouping under the label 'gap10'."""
    pools: dict[tuple[str, str, str], EventCounts] = {}
    for ds, m, d in decisions(opts, tracks, cache_dir):
        critical = d["critical"] if d["critical"].any() else None
        at_once = d["at_once"] if "at_once" in d and critical is not None else None  # caches before it: critical
        added = [tuple(int(v) for v in e) for e in d["mode_added"]]
        score = d.get("neg_log10_p")  # caches before it: the evidence rule sees no p-values
        for i, kw in enumerate(grid):
            settings = IncidentSettings(**kw)
            ev = event_counts(d["labels"], d["flagged"], critical, settings, added, at_once, score)  # type: ignore[arg-type]
            keys = [("incidents " + json.dumps(kw), ev["incidents"])] + ([("gap10", ev["gap10"])] if i == 0 else [])
            for label, c in keys:
                pools[(ds, m, label)] = pools.get((ds, m, label), EventCounts()) + c
    return pools


def markdown(pools: dict) -> str:
    lines = ["| data | method | grouping | " + " | ".join(COLUMNS) + " |", "|---|---|---|" + "---:|" * len(COLUMNS)]
    for (ds, m, label), c in sorted(pools.items()):
        r = c.metrics()
        cells = [f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in COLUMNS]
        lines.append(f"| {ds} | {m} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _grid(items: list[str]) -> list[dict]:
    """`--sweep quiet_records=30,60 --sweep open_k=3,4` -> the product of the values, as IncidentSettings kwargs."""
    grid: list[dict] = [{}]
    for item in items:
        key, _, values = item.partition("=")
        grid = [{**g, key: json.loads(v)} for g in grid for v in values.split(",")]
    return grid


def main(argv: list[str] | None = None) -> int:
    from benchmarks.cli import default_data_root

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tracks", default="T1,T2")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--cache", type=Path, required=True, help="folder of per-(series, method) decisions")
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--sweep", action="append", default=[], help="IncidentSettings field=v1,v2 (repeatable)")
    args = p.parse_args(argv)
    opts = BenchOptions(args.data_root or default_data_root(), ModelConfig(), methods=tuple(args.methods.split(",")))
    pools = sweep(opts, args.tracks.split(","), args.cache, _grid(args.sweep))
    print(markdown(pools))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
