"""Tracks T1-T3 of docs/evaluation.md, each method run the same way on the same rows.

Labels are read only here, to measure; no method ever receives them (`Series.values` has no label column).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from benchmarks.events import add_events, pool_events
from benchmarks.metrics import Decisions, auc_pr, decisions, mean_defined, series_metrics
from benchmarks.peers import (
    Extras,
    HalfSpaceTreesPeer,
    IsolationForestPeer,
    PcaT2QPeer,
    PcaT2QWindowPeer,
    Peer,
    StreamMoEPeer,
)
from streammoe.files.series import Series, read_series
from streammoe.incidents import IncidentSettings
from streammoe.model.config import ModelConfig

METHODS = ("streammoe", "streammoe-K1", "river-HST", "IsolationForest", "PCA-T2+Q", "PCA-T2+Q-window")
T3_METHODS = ("streammoe", "streammoe-static", "river-HST")
# streammoe-K1-static: the multi-mode tracks (t4.py); streammoe-W1 and streammoe-ctx: the configured model at
# context window 1 and with the default context (window CONTEXT_WINDOW unless the configuration sets one).
EXTRA_METHODS = ("streammoe-K1-static", "streammoe-W1", "streammoe-ctx")
CONTEXT_WINDOW = 10
T1_GROUPS = ("valve1", "valve2", "other")
T2_DATASETS = ("smd", "asd")
# Dev pairs only: within SMD group 1, across groups 2 -> 1 and 1 -> 2.
T3_PAIRS = (("machine-1-2", "machine-1-3"), ("machine-2-1", "machine-1-5"), ("machine-1-6", "machine-2-2"))
WARMUP = 400
SUMMARY_KEYS = ("f1", "far", "mar", "auc_pr", "auc_roc", "best_f1")
SHARED_FIT_NOTE = (
    "wall s = fit + score; a streammoe fit shared by several variants (one saved model directory) "
    "counts its full fit time for each of them. The T2-on-b baselines of T3 are not in T3's wall time."
)


@dataclass
class BenchOptions:
    data_root: Path
    config: ModelConfig
    series_filter: str | None = None
    max_series: int | None = None
    methods: tuple[str, ...] | None = None
    pairs: tuple[tuple[str, str], ...] = T3_PAIRS
    batch_size: int = 256
    incidents: IncidentSettings = field(default_factory=IncidentSettings)


@dataclass
class SeriesRun:
    series: str
    method: str
    metrics: dict
    fit_s: float
    score_s: float
    info: dict = field(default_factory=dict)


# Called once per (series, method) with its run and what a plot needs: labels, scores, decisions, extras,
# the row offset of the first scored row and [(row, text)] marks.
Observer = Callable[[str, SeriesRun, np.ndarray, np.ndarray, np.ndarray, Extras, int, list], None]


@dataclass
class TrackResult:
    track: str
    title: str
    methods: dict[str, str]
    runs: list[SeriesRun] = field(default_factory=list)
    summary: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class FitCache:
    """Fitted streammoe models saved as model directories (the CLI's `fit --out`), reused by key.

    One fit on a training file then serves every variant scored from it (learning or static, T2 and T3's
    baseline), each loading its own copy as `score --model` would."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="streammoe-bench-"))
        self.entries: dict[str, tuple[Path, float, dict]] = {}

    @staticmethod
    def key(x: np.ndarray, k: int | None, config: ModelConfig) -> str:
        h = hashlib.sha1(np.ascontiguousarray(x).tobytes())
        h.update(f"{k}|{config.model_dump_json()}".encode())
        return h.hexdigest()

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def natural_key(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


@lru_cache(maxsize=6)
def load(path: Path) -> Series:
    return read_series(path)


def make_peer(name: str, opts: BenchOptions, cache: FitCache | None) -> Peer:
    if name == "streammoe":
        return CachedStreamMoE(name, opts.config, None, True, opts.batch_size, cache)
    if name in ("streammoe-W1", "streammoe-ctx"):  # point-wise and with context, in the same run
        window = (
            1
            if name == "streammoe-W1"
            else (opts.config.context.window if opts.config.context.enabled else CONTEXT_WINDOW)
        )
        context = opts.config.context.model_copy(update={"window": window})
        return CachedStreamMoE(
            name, opts.config.model_copy(update={"context": context}), None, True, opts.batch_size, cache
        )
    if name == "streammoe-K1":
        return CachedStreamMoE(name, opts.config, 1, True, opts.batch_size, cache)
    if name == "streammoe-static":
        return CachedStreamMoE(name, opts.config, None, False, opts.batch_size, cache)
    if name == "streammoe-K1-static":
        return CachedStreamMoE(name, opts.config, 1, False, opts.batch_size, cache)
    if name == "river-HST":
        return HalfSpaceTreesPeer()
    if name == "IsolationForest":
        return IsolationForestPeer()
    if name == "PCA-T2+Q":
        return PcaT2QPeer()
    if name == "PCA-T2+Q-window":
        return PcaT2QWindowPeer()
    raise ValueError(f"unknown method {name!r}; known: {sorted(set(METHODS) | set(T3_METHODS) | set(EXTRA_METHODS))}")


class CachedStreamMoE(StreamMoEPeer):
    """StreamMoEPeer whose fit goes through a saved model directory when a cache is given."""

    def __init__(
        self, name: str, config: ModelConfig, k: int | None, learn: bool, batch_size: int, cache: FitCache | None
    ) -> None:
        super().__init__(name, config, k, learn, batch_size)
        self.cache = cache
        self.fit_seconds: float | None = None

    def fit(self, x: np.ndarray) -> None:
        from streammoe.state.persistence import load_detector, save_detector

        if self.cache is None:
            return super().fit(x)
        key = FitCache.key(x, self.k, self.config)
        if key not in self.cache.entries:
            t0 = time.perf_counter()
            super().fit(x)
            path = save_detector(self.detector, self.cache.root / key)
            self.cache.entries[key] = (path, time.perf_counter() - t0, dict(self.extras.info))
        path, self.fit_seconds, info = self.cache.entries[key]
        self.detector = load_detector(path)
        self.extras = Extras(info=dict(info))


def _methods(default: tuple[str, ...], opts: BenchOptions) -> list[str]:
    """The track's own methods, or those asked for among them and the context variants (EXTRA_METHODS)."""
    if opts.methods is None:
        return list(default)
    return [m for m in dict.fromkeys((*default, "streammoe-W1", "streammoe-ctx")) if m in opts.methods]


def _select(names: list[str], opts: BenchOptions) -> list[str]:
    picked = [n for n in names if opts.series_filter is None or opts.series_filter in n]
    return picked[: opts.max_series] if opts.max_series is not None else picked


def _run(
    peer: Peer, train: np.ndarray, stream: np.ndarray, times: tuple[list[str], list[str]] | None = None
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Fit on `train`, score `stream` in order; returns scores, decisions and the seconds each part took.
    `times`: the timestamps of both, for a peer that keeps a time context with gaps (streammoe)."""
    if times is not None and hasattr(peer, "timestamps"):
        peer.timestamps = times
    t0 = time.perf_counter()
    peer.fit(train)
    t1 = time.perf_counter()
    scores = peer.score_many(stream)
    flagged = np.asarray(peer.decide(scores)).astype(np.int8)
    t2 = time.perf_counter()
    fit_s = getattr(peer, "fit_seconds", None) or (t1 - t0)
    return scores, flagged, fit_s, t2 - t1


def _extras(peer: Peer) -> Extras:
    return getattr(peer, "extras", None) or Extras()


def _with_calibrated(metrics: dict, labels: np.ndarray, extras: Extras, part: slice = slice(None)) -> dict:
    """streammoe decides on its per-mode calibrated score, not the raw NLL; how that one ranks is worth seeing."""
    if extras.calibrated_score is not None:
        metrics["auc_pr_calibrated"] = auc_pr(labels, extras.calibrated_score[part])
    return metrics


def _with_events(
    metrics: dict, labels: np.ndarray, flagged: np.ndarray, extras: Extras, incidents: IncidentSettings, start: int = 0
) -> None:
    """The event metrics of a method's decisions, with what its extras say of them (critical rows, rows that open
    an incident at once, mode additions, calibrated scores as -log10 p)."""
    add_events(
        metrics,
        labels,
        flagged,
        extras.critical,
        extras.mode_added,
        incidents,
        start,
        extras.at_once,
        extras.calibrated_score,
    )


def _mean_summary(runs: list[SeriesRun], keys: tuple[str, ...]) -> dict:
    out: dict = {"n_series": len(runs), "wall_s": sum(r.fit_s + r.score_s for r in runs), "skipped": {}}
    for k in (*keys, "auc_pr_calibrated"):
        if not any(k in r.metrics for r in runs):
            continue
        out[k], skipped = mean_defined([r.metrics.get(k) for r in runs])
        if skipped:
            out["skipped"][k] = skipped
    return out


def _skip_notes(track: TrackResult) -> None:
    for method, s in track.summary.items():
        for k, n in s.get("skipped", {}).items():
            track.notes.append(f"{method}: {k} undefined on {n} series (a single class there), left out of its mean")


def run_t1(opts: BenchOptions, observe: Observer | None = None) -> TrackResult:
    """SKAB per experiment: learn from the first 400 rows of each file, score the rest; pool rows 400+."""
    root = opts.data_root / "skab"
    names = [
        f"skab/{g}/{p.name.removesuffix('.csv.gz')}"
        for g in T1_GROUPS
        for p in sorted((root / g).glob("*.csv.gz"), key=lambda p: natural_key(p.name))
    ]
    names = _select(names, opts)
    methods = _methods(METHODS, opts)
    track = TrackResult("T1", "T1 per-experiment (SKAB valve1, valve2, other; warm-up 400 rows, no model)", {})
    pooled: dict[str, Decisions] = {m: Decisions(0, 0, 0, 0) for m in methods}
    for name in names:
        s = load(opts.data_root / f"{name}.csv.gz")
        assert s.labels is not None, f"{name} has no label column"
        labels = s.labels[WARMUP:]
        for m in methods:
            peer = make_peer(m, opts, None)
            track.methods.setdefault(m, peer.describe())
            stamps = (s.timestamps[:WARMUP], s.timestamps[WARMUP:])
            scores, flagged, fit_s, score_s = _run(peer, s.values[:WARMUP], s.values[WARMUP:], stamps)
            pooled[m] = pooled[m] + decisions(labels, flagged)
            ex = _extras(peer)
            metrics = _with_calibrated(series_metrics(labels, scores, flagged), labels, ex)
            _with_events(metrics, labels, flagged, ex, opts.incidents)
            run = SeriesRun(name, m, metrics, fit_s, score_s, ex.info)
            track.runs.append(run)
            if observe is not None:
                observe("T1", run, labels, scores, flagged, ex, WARMUP, [])
    for m in methods:
        runs = [r for r in track.runs if r.method == m]
        summary = _mean_summary(runs, ("auc_pr", "auc_roc", "best_f1"))
        d = pooled[m]
        summary.update({"f1": d.f1, "far": d.far, "mar": d.mar, "precision": d.precision, "pooled": d.as_dict()})
        summary["events"] = pool_events(("all", r.metrics) for r in runs)
        track.summary[m] = summary
    track.notes.append(
        "F1/FAR/MAR pooled over rows 400+ of every file; AUC-PR, AUC-ROC, best-F1 are means of per-file values."
    )
    _skip_notes(track)
    return track


def t2_names(opts: BenchOptions) -> list[str]:
    names = []
    for ds in T2_DATASETS:
        tests = sorted((opts.data_root / ds).glob("*.test.csv.gz"), key=lambda p: natural_key(p.name))
        found = [
            f"{ds}/{p.name.removesuffix('.test.csv.gz')}"
            for p in tests
            if p.with_name(p.name.replace(".test.", ".train.")).exists()
        ]
        names += _select(found, opts)
    return names


def _t2_one(
    name: str, method: str, opts: BenchOptions, cache: FitCache, observe: Observer | None, track: str = "T2"
) -> tuple[SeriesRun, str]:
    train = load(opts.data_root / f"{name}.train.csv.gz")
    test = load(opts.data_root / f"{name}.test.csv.gz")
    assert test.labels is not None, f"{name}.test has no label column"
    peer = make_peer(method, opts, cache)
    scores, flagged, fit_s, score_s = _run(peer, train.values, test.values, (train.timestamps, test.timestamps))
    ex = _extras(peer)
    metrics = _with_calibrated(series_metrics(test.labels, scores, flagged), test.labels, ex)
    _with_events(metrics, test.labels, flagged, ex, opts.incidents)
    run = SeriesRun(name, method, metrics, fit_s, score_s, ex.info)
    if observe is not None:
        observe(track, run, test.labels, scores, flagged, ex, 0, [])
    return run, peer.describe()


def run_t2(opts: BenchOptions, cache: FitCache, observe: Observer | None = None) -> TrackResult:
    """Train/test: fit on X.train, score X.test with the model (learning on, as `score --model`)."""
    track = TrackResult("T2", "T2 train/test (SMD, ASD; fit on X.train, score X.test)", {})
    for name in t2_names(opts):
        for m in _methods(METHODS, opts):
            run, desc = _t2_one(name, m, opts, cache, observe)
            track.methods.setdefault(m, desc)
            track.runs.append(run)
    for m in track.methods:
        runs = [r for r in track.runs if r.method == m]
        track.summary[m] = _mean_summary(runs, SUMMARY_KEYS)
        track.summary[m]["events"] = pool_events((r.series.split("/")[0], r.metrics) for r in runs)
    track.notes.append(SHARED_FIT_NOTE)
    _skip_notes(track)
    return track


def run_t3(
    opts: BenchOptions, cache: FitCache, t2: TrackResult | None = None, observe: Observer | None = None
) -> TrackResult:
    """New mode a -> b: fit on a.train, score b.train then b.test as one stream (learning unless static)."""
    track = TrackResult("T3", "T3 new mode (SMD a -> b; fit a.train, stream b.train + b.test)", {})
    track.notes.append(
        "Only development pairs of SMD machines; ratios divide by the same method's T2 on b "
        "(fit b.train, score b.test), run here if T2 did not."
    )
    pairs = [(a, b) for a, b in opts.pairs if opts.series_filter is None or opts.series_filter in f"{a}->{b}"]
    pairs = pairs[: opts.max_series] if opts.max_series is not None else pairs
    baseline = {(r.series, r.method): r for r in (t2.runs if t2 else [])}
    for a, b in pairs:
        a_train = load(opts.data_root / f"smd/{a}.train.csv.gz")
        b_train = load(opts.data_root / f"smd/{b}.train.csv.gz")
        b_test = load(opts.data_root / f"smd/{b}.test.csv.gz")
        assert b_test.labels is not None
        n_train = len(b_train.values)
        stream = np.concatenate([b_train.values, b_test.values])
        for m in _methods(T3_METHODS, opts):
            peer = make_peer(m, opts, cache)
            track.methods.setdefault(m, peer.describe())
            scores, flagged, fit_s, score_s = _run(peer, a_train.values, stream)
            ex = _extras(peer)
            metrics = series_metrics(b_test.labels, scores[n_train:], flagged[n_train:])
            _with_calibrated(metrics, b_test.labels, ex, slice(n_train, None))
            metrics["far_b_train_2nd_half"] = float(flagged[n_train // 2 : n_train].mean())
            metrics["far_b_train_1st_half"] = float(flagged[: n_train // 2].mean())
            _with_events(metrics, b_test.labels, flagged, ex, opts.incidents, n_train)
            ref = baseline.get((f"smd/{b}", m))
            if ref is None:
                ref, _ = _t2_one(f"smd/{b}", m, opts, cache, None)
                baseline[(f"smd/{b}", m)] = ref
            for k in ("auc_pr", "auc_roc", "f1", "best_f1"):
                mine, base = metrics.get(k), ref.metrics.get(k)
                metrics[f"{k}_ratio"] = mine / base if mine is not None and base else None
            metrics["t2_on_b"] = {k: ref.metrics.get(k) for k in SUMMARY_KEYS}
            run = SeriesRun(f"{a}->{b}", m, metrics, fit_s, score_s, ex.info)
            track.runs.append(run)
            if observe is not None:
                labels = np.concatenate([np.zeros(n_train, np.int8), b_test.labels])
                marks = [(n_train // 2, "b.train 2nd half"), (n_train, "b.test")]
                observe("T3", run, labels, scores, flagged, ex, 0, marks)
    keys = ("far_b_train_2nd_half", *SUMMARY_KEYS, "auc_pr_ratio", "auc_roc_ratio", "f1_ratio", "best_f1_ratio")
    for m in track.methods:
        runs = [r for r in track.runs if r.method == m]
        track.summary[m] = _mean_summary(runs, keys)
        track.summary[m]["events"] = pool_events(("all", r.metrics) for r in runs)
    track.notes.append(SHARED_FIT_NOTE)
    _skip_notes(track)
    return track
