"""Track T4 on a multi-mode process, and the SMD splice that asks the same question of real data.

- T4A: fit on every mode's normal training run, score each normal test run and each fault run on its own (a
  fresh copy of the fitted method per run, as `score --model` per file): FAR per mode, recall per fault kind,
  AUC-ROC, and recall at FAR <= 1 % with the threshold picked on the normal test runs.
- T4B: fit on one mode, stream that mode then an unseen one (an abrupt switch), learning on: FAR on the old mode
  and on each half of the new one, records from the switch to the first `mode_added`, events, experts at the end.
- SPLICE: T4B's measurement on real data, one SMD machine's training part spliced to another's (see splice.py).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np

from benchmarks.metrics import auc_roc, finite_scores
from benchmarks.multimode import MultiModeSet, SwitchRun
from benchmarks.peers import Extras, Peer
from benchmarks.tracks import (
    BenchOptions,
    CachedStreamMoE,
    FitCache,
    Observer,
    SeriesRun,
    TrackResult,
    _methods,
    make_peer,
)

T4A_METHODS = (
    "streammoe-static",
    "streammoe-K1-static",
    "streammoe",
    "river-HST",
    "IsolationForest",
    "PCA-T2+Q",
    "PCA-T2+Q-window",
)
T4B_METHODS = (
    "streammoe",
    "streammoe-K1",
    "streammoe-static",
    "river-HST",
    "IsolationForest",
    "PCA-T2+Q",
    "PCA-T2+Q-window",
)
# Fitted mode -> unseen mode. 3 -> 0 unparks three valves (feeds E and C, anti-surge), 4 -> 2 unparks feed D,
# 0 -> 5 parks nothing but moves every flow.
T4B_PAIRS = ((3, 0), (4, 2), (0, 5))
FAR_TARGET = 0.01


@dataclass
class MultiModeOptions:
    data: MultiModeSet
    pairs: tuple[tuple[int, int], ...] = T4B_PAIRS
    records: int = 2400  # per side of a switch
    seed: int = 0


def _fresh(peer: Peer, train: np.ndarray) -> Peer:
    """A copy of the fitted method to score one run with: streammoe reloads its saved model, others are copied."""
    if isinstance(peer, CachedStreamMoE):
        again = CachedStreamMoE(peer.name, peer.config, peer.k, peer.learn, peer.batch_size, peer.cache)
        again.fit(train)
        return again
    return copy.deepcopy(peer)


def _score(peer: Peer, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, Extras]:
    scores = np.asarray(peer.score_many(x), dtype=np.float64)
    flagged = np.asarray(peer.decide(scores)).astype(np.int8)
    return scores, flagged, getattr(peer, "extras", None) or Extras()


def recall_at_far(normal: np.ndarray, anomalous: np.ndarray, far: float = FAR_TARGET) -> tuple[float, float]:
    """Recall on anomalous rows at the threshold that flags at most `far` of the normal rows; and that threshold."""
    normal, anomalous = finite_scores(normal), finite_scores(anomalous)
    threshold = float(np.quantile(normal, 1 - far, method="higher"))
    return float((anomalous > threshold).mean()) if len(anomalous) else float("nan"), threshold


def run_t4a(opts: BenchOptions, mm: MultiModeOptions, cache: FitCache, observe: Observer | None = None) -> TrackResult:
    data = mm.data
    track = TrackResult("T4A", f"T4 (a) all modes fitted, --no-learn per run ({data.source})", {})
    train = np.concatenate([data.train[m] for m in sorted(data.train)])
    kinds = sorted({r.fault for r in data.tests if r.fault})
    for method in _methods(T4A_METHODS, opts):
        peer = make_peer(method, opts, cache)
        track.methods[method] = peer.describe()
        t0 = time.perf_counter()
        peer.fit(train)
        fit_s = getattr(peer, "fit_seconds", None) or time.perf_counter() - t0
        per: list[tuple] = []
        score_s = 0.0
        for run in data.tests:
            copy_ = _fresh(peer, train)
            t1 = time.perf_counter()
            scores, flagged, ex = _score(copy_, run.values)
            score_s += time.perf_counter() - t1
            cal = ex.calibrated_score.copy() if ex.calibrated_score is not None else None
            per.append((run, scores, flagged, cal))
            rows = run.labels.astype(bool) if run.fault else ~run.labels.astype(bool)
            metrics = {
                "flag_rate": float(flagged[rows].mean()),
                "auc_roc": auc_roc(run.labels, scores),
                "experts_at_end": ex.info.get("experts_at_end"),
            }
            sr = SeriesRun(
                run.name,
                method,
                metrics,
                fit_s if run is data.tests[0] else 0.0,
                time.perf_counter() - t1,
                {"k_selected": ex.info.get("k_selected")},
            )
            track.runs.append(sr)
            if observe is not None:
                observe("T4A", sr, run.labels, scores, flagged, ex, 0, [])
        track.summary[method] = _t4a_summary(per, kinds, sorted(data.train), fit_s, score_s)
        track.summary[method]["k_selected"] = (getattr(peer, "extras", None) or Extras()).info.get("k_selected")
    track.notes += [
        (
            "FAR: is_anomaly on each mode's normal test run (mean of the modes); recall: is_anomaly on the labelled rows "
            "of the fault runs, pooled; far_prefault: is_anomaly on the fault runs' rows before the fault."
        ),
        (
            f"recall@FAR≤{FAR_TARGET:.0%}: the score threshold is the {1 - FAR_TARGET:.0%} quantile of the method's "
            "scores on all normal test runs (picked with the labels, an evaluation device, not the method's own threshold)."
        ),
        "AUC-ROC: per mode over its normal test run and its fault runs, then the mean; 'pooled' ranks all runs together.",
        "Every run is scored by a fresh copy of the fitted method; river-HST learns within each run (it always does).",
    ]
    return track


def _t4a_summary(per: list[tuple], kinds: list[str], modes: list[int], fit_s: float, score_s: float) -> dict:
    out: dict = {"n_series": len(per), "wall_s": fit_s + score_s}
    normal_scores: list[np.ndarray] = []
    fault_scores: list[np.ndarray] = []
    normal_cal: list[np.ndarray] = []
    fault_cal: list[np.ndarray] = []
    fars = []
    for m in modes:
        runs = [p for p in per if p[0].mode == m]
        normal = [p for p in runs if p[0].fault is None]
        if normal:
            out[f"far_mode{m}"] = float(np.mean([p[2].mean() for p in normal]))
            fars.append(out[f"far_mode{m}"])
        labels = np.concatenate([p[0].labels for p in runs])
        scores = np.concatenate([p[1] for p in runs])
        out[f"auc_roc_mode{m}"] = auc_roc(labels, scores)
    out["far"] = float(np.mean(fars)) if fars else None
    prefault = [p[2][p[0].labels == 0] for p in per if p[0].fault]
    out["far_prefault"] = float(np.concatenate(prefault).mean()) if prefault else None
    for k in kinds:
        hits = np.concatenate([p[2][p[0].labels == 1] for p in per if p[0].fault == k])
        out[f"recall_{k}"] = float(hits.mean())
    faulty = [p for p in per if p[0].fault]
    out["recall"] = float(np.concatenate([p[2][p[0].labels == 1] for p in faulty]).mean()) if faulty else None
    for run, scores, _, cal in per:
        (normal_scores if run.fault is None else fault_scores).append(scores[run.labels == (1 if run.fault else 0)])
        if cal is not None:
            (normal_cal if run.fault is None else fault_cal).append(cal[run.labels == (1 if run.fault else 0)])
    if normal_scores and fault_scores:
        out["recall_at_far1"], out["threshold_at_far1"] = recall_at_far(
            np.concatenate(normal_scores), np.concatenate(fault_scores)
        )
        for k in kinds:
            ks = np.concatenate([p[1][p[0].labels == 1] for p in per if p[0].fault == k])
            out[f"recall_at_far1_{k}"] = float((finite_scores(ks) > out["threshold_at_far1"]).mean())
    if normal_cal and fault_cal:
        out["recall_at_far1_calibrated"], _ = recall_at_far(np.concatenate(normal_cal), np.concatenate(fault_cal))
    aucs = [out[f"auc_roc_mode{m}"] for m in modes if out.get(f"auc_roc_mode{m}") is not None]
    out["auc_roc"] = float(np.mean(aucs)) if aucs else None
    all_labels = np.concatenate([p[0].labels for p in per])
    out["auc_roc_pooled"] = auc_roc(all_labels, np.concatenate([p[1] for p in per]))
    return out


def switch_metrics(flagged: np.ndarray, switch_at: int, extras: Extras) -> dict:
    """FAR before the switch and on each half of the new mode; when and how often a mode was added after it."""
    new = flagged[switch_at:]
    half = len(new) // 2
    added = [row for row, kind, _ in extras.events if kind == "mode_added"]
    after = [row for row in added if row > switch_at]
    return {
        "far_old": float(flagged[:switch_at].mean()),
        "far_new_1st_half": float(new[:half].mean()),
        "far_new_2nd_half": float(new[half:].mean()),
        "far_new_last_tenth": float(new[-max(len(new) // 10, 1) :].mean()),
        "records_to_mode_added": (after[0] - switch_at) if after else None,
        "mode_added": len(after),
        "mode_added_before_switch": len(added) - len(after),
        "experts_at_end": extras.info.get("experts_at_end"),
    }


def run_switches(
    track_name: str,
    title: str,
    runs: list[tuple[str, np.ndarray, SwitchRun]],
    opts: BenchOptions,
    cache: FitCache,
    observe: Observer | None = None,
) -> TrackResult:
    """Each (name, fit data, switch run): fit, stream with learning as the method does, measure the switch."""
    track = TrackResult(track_name, title, {})
    for name, train, sw in runs:
        for method in _methods(T4B_METHODS, opts):
            peer = make_peer(method, opts, cache)
            track.methods.setdefault(method, peer.describe())
            t0 = time.perf_counter()
            peer.fit(train)
            fit_s = getattr(peer, "fit_seconds", None) or time.perf_counter() - t0
            t1 = time.perf_counter()
            scores, flagged, ex = _score(peer, sw.values)
            metrics = switch_metrics(flagged, sw.switch_at, ex)
            run = SeriesRun(
                name,
                method,
                metrics,
                fit_s,
                time.perf_counter() - t1,
                {"k_selected": ex.info.get("k_selected"), "events": ex.events},
            )
            track.runs.append(run)
            if observe is not None:
                marks = [(sw.switch_at, "switch")] + [(r, k) for r, k, _ in ex.events]
                observe(track_name, run, np.zeros(len(flagged), np.int8), scores, flagged, ex, 0, marks)
    keys = (
        "far_old",
        "far_new_1st_half",
        "far_new_2nd_half",
        "far_new_last_tenth",
        "mode_added",
        "mode_added_before_switch",
        "experts_at_end",
    )
    for method in track.methods:
        mine = [r for r in track.runs if r.method == method]
        s: dict = {"n_series": len(mine), "wall_s": sum(r.fit_s + r.score_s for r in mine)}
        for k in keys:
            vals = [r.metrics[k] for r in mine if r.metrics.get(k) is not None]
            s[k] = float(np.mean(vals)) if vals else None
        delays = [r.metrics["records_to_mode_added"] for r in mine]
        s["switches_with_mode_added"] = sum(d is not None for d in delays)
        s["records_to_mode_added_max"] = (
            max(d for d in delays if d is not None) if any(d is not None for d in delays) else None
        )
        track.summary[method] = s
    track.notes += [
        "Every record is normal operation (the switch is a setpoint change), so every flag is a false alarm.",
        (
            "records_to_mode_added: rows from the switch to the end of the batch whose learning raised the first "
            "mode_added (None: never); mode_added counts those after the switch; experts_at_end is the active count."
        ),
    ]
    return track


def run_t4b(opts: BenchOptions, mm: MultiModeOptions, cache: FitCache, observe: Observer | None = None) -> TrackResult:
    data = mm.data
    runs = []
    for i, (a, b) in enumerate(mm.pairs):
        sw = data.switch(a, b, mm.records, seed=mm.seed * 1000 + 900 + i)
        name = f"{a}:{data.mode_names.get(a, a)} -> {b}:{data.mode_names.get(b, b)}"
        runs.append((name, data.train[a][: mm.records], sw))
    title = f"T4 (b) one mode fitted, switch to an unseen mode, learning on ({data.source})"
    return run_switches("T4B", title, runs, opts, cache, observe)
