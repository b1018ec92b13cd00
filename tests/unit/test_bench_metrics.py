"""The benchmark's metrics on hand-made arrays whose answers are known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.metrics import (
    Decisions,
    auc_pr,
    auc_roc,
    best_f1,
    decisions,
    finite_scores,
    mean_defined,
    series_metrics,
)

LABELS = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])


def test_counts_f1_far_mar() -> None:
    flagged = np.array([1, 0, 0, 0, 0, 0, 1, 1, 1, 0])  # 1 false alarm of 6 normal, 1 miss of 4 anomalous
    d = decisions(LABELS, flagged)
    assert (d.tp, d.fp, d.fn, d.tn) == (3, 1, 1, 5)
    assert d.precision == pytest.approx(0.75)
    assert d.recall == pytest.approx(0.75)
    assert d.f1 == pytest.approx(0.75)
    assert d.far == pytest.approx(1 / 6)
    assert d.mar == pytest.approx(1 / 4)


def test_flag_everything_and_nothing() -> None:
    everything = decisions(LABELS, np.ones(10))
    assert everything.far == 1.0 and everything.mar == 0.0
    assert everything.f1 == pytest.approx(2 * 0.4 / 1.4)
    nothing = decisions(LABELS, np.zeros(10))
    assert nothing.f1 == 0.0 and nothing.far == 0.0 and nothing.mar == 1.0


def test_pooling_adds_counts() -> None:
    pooled = Decisions(1, 2, 3, 4) + Decisions(10, 20, 30, 40)
    assert (pooled.tp, pooled.fp, pooled.fn, pooled.tn) == (11, 22, 33, 44)


def test_perfect_and_reversed_scorer() -> None:
    perfect = LABELS + np.linspace(0, 0.5, 10)
    assert auc_pr(LABELS, perfect) == pytest.approx(1.0)
    assert auc_roc(LABELS, perfect) == pytest.approx(1.0)
    assert best_f1(LABELS, perfect) == pytest.approx(1.0)
    reversed_ = -perfect
    assert auc_roc(LABELS, reversed_) == pytest.approx(0.0)
    # ranked last: precision at the k-th anomaly is k / (6 + k)
    assert auc_pr(LABELS, reversed_) == pytest.approx(np.mean([k / (6 + k) for k in range(1, 5)]))


def test_best_f1_bounds_the_decision_f1() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random(300) < 0.2).astype(int)
    scores = labels + rng.normal(0, 0.8, 300)
    for threshold in (-1.0, 0.0, 0.5, 1.0, 2.0):
        flagged = scores > threshold
        assert best_f1(labels, scores) >= decisions(labels, flagged).f1 - 1e-12


def test_infinite_scores_rank_first() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.0, 0.1, 0.2, 5.0, np.inf, np.inf, 4.0])
    mapped = finite_scores(scores)
    assert np.isfinite(mapped).all()
    assert mapped[7] > 5.0 and mapped[8] > 5.0
    assert auc_pr(LABELS, scores) == pytest.approx(1.0)
    assert finite_scores(np.array([np.nan, 1.0]))[0] < 1.0


def test_no_anomaly_series_is_skipped_from_means() -> None:
    normal = np.zeros(10, dtype=int)
    m = series_metrics(normal, np.arange(10.0), np.zeros(10))
    assert m["auc_pr"] is None and m["auc_roc"] is None and m["best_f1"] is None
    assert m["mar"] is None and m["far"] == 0.0
    mean, skipped = mean_defined([0.5, None, 1.0])
    assert mean == pytest.approx(0.75) and skipped == 1
    assert mean_defined([None, None]) == (None, 2)
