"""Point-wise detection metrics of docs/evaluation.md (no point-adjust).

Decision metrics (F1, FAR, MAR) judge a detector's own 0/1 output, which is what an operator gets. Ranking
metrics (AUC-PR, AUC-ROC, best-F1) judge its scores; they are undefined on a series with one class only, so
they come back as None there and `mean_defined` leaves them out of means (and counts what it left out).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score


@dataclass
class Decisions:
    """Confusion counts of a 0/1 decision against labels, and the rates derived from them."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        return 2 * self.tp / (2 * self.tp + self.fp + self.fn) if self.tp else 0.0

    @property
    def far(self) -> float | None:
        """False alarms per normal row; None without normal rows."""
        normal = self.fp + self.tn
        return self.fp / normal if normal else None

    @property
    def mar(self) -> float | None:
        """Missed anomalous rows per anomalous row; None without anomalous rows."""
        anomalous = self.tp + self.fn
        return self.fn / anomalous if anomalous else None

    def __add__(self, other: Decisions) -> Decisions:
        return Decisions(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "far": self.far,
            "mar": self.mar,
        }


def decisions(labels: np.ndarray, flagged: np.ndarray) -> Decisions:
    y = np.asarray(labels).astype(bool)
    d = np.asarray(flagged).astype(bool)
    if y.shape != d.shape:
        raise ValueError(f"labels {y.shape} and decisions {d.shape} differ in shape")
    return Decisions(int((y & d).sum()), int((~y & d).sum()), int((y & ~d).sum()), int((~y & ~d).sum()))


def finite_scores(scores: np.ndarray) -> np.ndarray:
    """Scores with +inf mapped above the largest finite score, -inf below the smallest, NaN to the bottom.

    A non-finite input row is the most anomalous thing a detector can report, so it must rank first, not
    break the ranking metrics."""
    s = np.asarray(scores, dtype=np.float64)
    ok = np.isfinite(s)
    if ok.all():
        return s
    if ok.any():
        lo, hi = float(s[ok].min()), float(s[ok].max())
    else:
        lo, hi = 0.0, 0.0
    span = max(hi - lo, 1.0)
    out = s.copy()
    out[np.isposinf(s)] = hi + span
    out[np.isneginf(s) | np.isnan(s)] = lo - span
    return out


def _both_classes(labels: np.ndarray) -> bool:
    y = np.asarray(labels).astype(bool)
    return bool(y.any() and (~y).any())


def auc_pr(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Average precision; None when the series has a single class."""
    if not _both_classes(labels):
        return None
    return float(average_precision_score(np.asarray(labels).astype(int), finite_scores(scores)))


def auc_roc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    if not _both_classes(labels):
        return None
    return float(roc_auc_score(np.asarray(labels).astype(int), finite_scores(scores)))


def best_f1(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """The best point-wise F1 over all thresholds: picked with the labels, so an upper bound only."""
    y = np.asarray(labels).astype(int)
    if not y.any():
        return None
    precision, recall, _ = precision_recall_curve(y, finite_scores(scores))
    f = 2 * precision * recall / np.maximum(precision + recall, 1e-300)
    return float(f.max())


def series_metrics(labels: np.ndarray, scores: np.ndarray, flagged: np.ndarray) -> dict:
    """Every per-series number of T2: decision counts and rates, plus the ranking metrics."""
    d = decisions(labels, flagged)
    return {
        **d.as_dict(),
        "auc_pr": auc_pr(labels, scores),
        "auc_roc": auc_roc(labels, scores),
        "best_f1": best_f1(labels, scores),
        "n_rows": len(labels),
        "n_anomalous": int(np.asarray(labels).astype(bool).sum()),
    }


def mean_defined(values: list[float | None]) -> tuple[float | None, int]:
    """Mean of the defined values and how many were undefined (skipped)."""
    ok = [v for v in values if v is not None and not math.isnan(v)]
    skipped = len(values) - len(ok)
    return (float(np.mean(ok)) if ok else None), skipped
