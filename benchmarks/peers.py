"""The methods compared side by side, behind one small protocol.

`fit(X)` learns from the training part (normal rows, or a warm-up); `score_many(X)` scores a stream in
order, learning online as it goes if the method does; `decide(scores)` is the method's own 0/1 decision at
a threshold it chose without labels. Peers without a threshold of their own take the 99th percentile of
their scores on the training part (`TRAIN_QUANTILE`), the usual convention for one-class baselines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from streammoe.model.config import ModelConfig

TRAIN_QUANTILE = 0.99
RANGE_FLOOR = 1e-6


class Peer(Protocol):
    name: str

    def describe(self) -> str: ...

    def fit(self, x: np.ndarray) -> None: ...

    def score_many(self, x: np.ndarray) -> np.ndarray: ...

    def decide(self, scores: np.ndarray) -> np.ndarray: ...


@dataclass
class Extras:
    """What a method can show beyond score and decision (only streammoe fills it): for plots and JSON."""

    mode: np.ndarray | None = None
    calibrated_score: np.ndarray | None = None
    calibrated_threshold: float | None = None
    n_experts: np.ndarray | None = None
    events: list[tuple[int, str, int]] = field(default_factory=list)  # (rows scored when raised, kind, expert)
    critical: np.ndarray | None = None  # alerted rows of critical severity (critical p-value, out of range)
    at_once: np.ndarray | None = None  # of them, the rows that open an incident at once (incidents.opens_at_once)
    mode_added: list[tuple[int, int, int]] = field(default_factory=list)  # (expert, first row, last row)
    info: dict = field(default_factory=dict)


def _finite_rows(x: np.ndarray) -> np.ndarray:
    return x[np.isfinite(x).all(axis=1)]


def _impute(x: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Peers without a notion of missing values see the training mean in place of NaN/inf."""
    bad = ~np.isfinite(x)
    return np.where(bad, fill[None, :], x) if bad.any() else x


class ThresholdFromTraining:
    """Decision at the TRAIN_QUANTILE of the training-part scores (in-sample, so slightly optimistic)."""

    threshold: float = float("inf")

    def _set_threshold(self, train_scores: np.ndarray) -> None:
        self.threshold = float(np.quantile(train_scores, TRAIN_QUANTILE))

    def decide(self, scores: np.ndarray) -> np.ndarray:
        return (np.asarray(scores) > self.threshold).astype(np.int8)


class HalfSpaceTreesPeer(ThresholdFromTraining):
    """river's HalfSpaceTrees, online: each stream row is scored, then learned.

    Features are min-max scaled with the training part's range (HST assumes [0, 1]); the training part is
    learned row by row, and the threshold is the quantile of its scores after that (no learning while
    scoring it)."""

    name = "river-HST"

    def __init__(self, n_trees: int = 25, height: int = 8, window_size: int = 250, seed: int = 0) -> None:
        self.params = {"n_trees": n_trees, "height": height, "window_size": window_size, "seed": seed}

    def describe(self) -> str:
        p = self.params
        return (
            f"river HalfSpaceTrees n_trees={p['n_trees']} height={p['height']} window={p['window_size']}, "
            f"min-max scaled on the training part, score-then-learn every row; "
            f"threshold q{TRAIN_QUANTILE:.2f} of training scores"
        )

    def _rows(self, x: np.ndarray) -> list[dict[int, float]]:
        z = (_impute(x, self.fill) - self.lo) / self.span
        return [dict(enumerate(r)) for r in z.astype(float).tolist()]

    def fit(self, x: np.ndarray) -> None:
        from river.anomaly import HalfSpaceTrees

        clean = _finite_rows(x)
        self.lo, hi = clean.min(axis=0), clean.max(axis=0)
        self.span = np.maximum(hi - self.lo, RANGE_FLOOR)
        self.fill = clean.mean(axis=0)
        self.model = HalfSpaceTrees(**self.params)
        rows = self._rows(x)
        for r in rows:
            self.model.learn_one(r)
        self._set_threshold(np.array([self.model.score_one(r) for r in rows]))

    def score_many(self, x: np.ndarray) -> np.ndarray:
        out = np.empty(len(x))
        for i, r in enumerate(self._rows(x)):
            out[i] = self.model.score_one(r)
            self.model.learn_one(r)
        return out


class IsolationForestPeer(ThresholdFromTraining):
    """sklearn IsolationForest fitted on the training part; static."""

    name = "IsolationForest"

    def __init__(self, n_estimators: int = 100, seed: int = 0) -> None:
        self.n_estimators, self.seed = n_estimators, seed

    def describe(self) -> str:
        return (
            f"sklearn IsolationForest n_estimators={self.n_estimators}, fitted on the training part, static; "
            f"score = -score_samples; threshold q{TRAIN_QUANTILE:.2f} of training scores"
        )

    def fit(self, x: np.ndarray) -> None:
        from sklearn.ensemble import IsolationForest

        clean = _finite_rows(x)
        self.fill = clean.mean(axis=0)
        self.model = IsolationForest(n_estimators=self.n_estimators, random_state=self.seed).fit(clean)
        self._set_threshold(self.score_many(clean))

    def score_many(self, x: np.ndarray) -> np.ndarray:
        return -self.model.score_samples(_impute(x, self.fill))


class PcaT2QPeer(ThresholdFromTraining):
    """PCA on standardised training data; score = T²/q99(T²) + Q/q99(Q), both quantiles from training.

    Components: the fewest that explain `variance` of the training variance, kept below the channel count so
    the residual space (Q, the squared prediction error) is never empty."""

    name = "PCA-T2+Q"

    def __init__(self, variance: float = 0.95) -> None:
        self.variance = variance

    def describe(self) -> str:
        return (
            f"PCA T²+Q on standardised training data, components for {self.variance:.0%} of variance; "
            f"score = T²/q99(T²) + Q/q99(Q) (training quantiles); threshold q{TRAIN_QUANTILE:.2f} of training scores"
        )

    def _parts(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = (_impute(x, self.mean) - self.mean) / self.std
        t = z @ self.components.T
        t2 = (t**2 / self.eigen).sum(axis=1)
        q = ((z - t @ self.components) ** 2).sum(axis=1)
        return t2, q

    def fit(self, x: np.ndarray) -> None:
        clean = _finite_rows(x).astype(np.float64)
        self.mean = clean.mean(axis=0)
        self.std = np.maximum(clean.std(axis=0), RANGE_FLOOR)
        z = (clean - self.mean) / self.std
        _, sing, vt = np.linalg.svd(z, full_matrices=False)
        eigen = sing**2 / max(len(z) - 1, 1)
        share = np.cumsum(eigen) / max(eigen.sum(), 1e-300)
        n = int(np.searchsorted(share, self.variance) + 1)
        n = max(1, min(n, z.shape[1] - 1)) if z.shape[1] > 1 else 1
        self.n_components = n
        self.components, self.eigen = vt[:n], np.maximum(eigen[:n], 1e-12)
        t2, q = self._parts(clean)
        self.t2_ref = max(float(np.quantile(t2, 0.99)), 1e-12)
        self.q_ref = max(float(np.quantile(q, 0.99)), 1e-12)
        self._set_threshold(self._score(clean))

    def _score(self, x: np.ndarray) -> np.ndarray:
        t2, q = self._parts(x)
        return t2 / self.t2_ref + q / self.q_ref

    def score_many(self, x: np.ndarray) -> np.ndarray:
        return self._score(x)


CONTEXT_ROWS = 10


class TimeContext:
    """Per row: its values, its change from the previous row, and the spread of and distance from the mean of
    the last `rows` rows (the row itself included), as 4 x C features.

    The context carries over from one `transform` call to the next (a stream scored in parts sees the same
    features as in one call) and starts empty: the first rows of a stream use what history there is, and the
    first row's change is 0."""

    def __init__(self, rows: int = CONTEXT_ROWS) -> None:
        self.rows = rows
        self.history: np.ndarray | None = None

    def transform(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        past = self.history if self.history is not None else x[:0]
        full = np.concatenate([past, x])
        n_past = len(past)
        prev = np.concatenate([full[:1], full[:-1]])
        change = (full - prev)[n_past:]
        csum = np.concatenate([np.zeros((1, full.shape[1])), np.cumsum(full, axis=0)])
        csq = np.concatenate([np.zeros((1, full.shape[1])), np.cumsum(full**2, axis=0)])
        end = np.arange(n_past, len(full)) + 1
        start = np.maximum(end - self.rows, 0)
        count = (end - start)[:, None]
        mean = (csum[end] - csum[start]) / count
        var = np.maximum((csq[end] - csq[start]) / count - mean**2, 0.0)
        self.history = full[-(self.rows - 1) :] if self.rows > 1 else full[:0]
        return np.hstack([x, change, np.sqrt(var), x - mean])

    def reset(self) -> None:
        self.history = None


class PcaT2QWindowPeer(PcaT2QPeer):
    """PCA T²+Q with time context: the same detector on TimeContext features, so a change of dynamics (more
    variance, an oscillation, a stuck signal) shows even where every single value stays in range.

    The training part is one stream; a scored stream starts without context from it."""

    name = "PCA-T2+Q-window"

    def __init__(self, variance: float = 0.95, rows: int = CONTEXT_ROWS) -> None:
        super().__init__(variance)
        self.context = TimeContext(rows)

    def describe(self) -> str:
        return (
            f"PCA T²+Q as PCA-T2+Q, on per-row time context over the last {self.context.rows} rows (values, "
            f"change from the previous row, spread, distance from the window mean: 4 features per channel)"
        )

    def fit(self, x: np.ndarray) -> None:
        clean = _finite_rows(x).astype(np.float64)
        self.fill = clean.mean(axis=0)
        self.context.reset()
        super().fit(self.context.transform(clean))
        self.context.reset()

    def score_many(self, x: np.ndarray) -> np.ndarray:
        """Missing values become the training mean before the context is taken, so one NaN cannot poison the
        window sums of the rows after it."""
        return self._score(self.context.transform(_impute(x, self.fill)))


class StreamMoEPeer:
    """streammoe itself, driven through the code path of `streammoe fit` / `streammoe score`.

    `fit` is MixtureDetector.fit (what `fit` and `score --warmup` call); `score_many` is offline.score_stream
    with that detector (what `score --model` calls), learning online unless `learn` is False (`--no-learn`), and
    with `ModelConfig.cascade` as the daemon applies it (`score` itself gives every record the full pass).
    The decision is the detector's own `is_anomaly` for the stream just scored; `decide` ignores its argument.
    """

    def __init__(
        self, name: str, config: ModelConfig, k: int | None = None, learn: bool = True, batch_size: int = 256
    ) -> None:
        self.name, self.config, self.k, self.learn, self.batch_size = name, config, k, learn, batch_size
        self.extras = Extras()
        self.timestamps: tuple[list[str], list[str]] | None = None  # (fit rows, scored rows): the context's gaps

    def _axes(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The fit's and the stream's time axes in the series' median steps (one series: one asset)."""
        from streammoe.context.timeline import in_steps, parse_times

        if self.timestamps is None:
            return None, None
        fit, stream = self.timestamps
        times = parse_times([*fit, *stream])
        if times is None:
            return None, None
        axis = in_steps(times)
        return axis[: len(fit)], axis[len(fit) :]

    def describe(self) -> str:
        k = "K by BIC up to k_max" if self.k is None else f"K={self.k}"
        learn = "learning online" if self.learn else "--no-learn (static)"
        return (
            f"streammoe {k}, {learn}, batch {self.batch_size}; score = NLL (the CSV `score`), "
            f"decision = its own is_anomaly (p < {self.config.threshold:g})"
        )

    def fit(self, x: np.ndarray) -> None:
        from streammoe.model.detector import MixtureDetector

        self.detector = MixtureDetector(x.shape[1], self.config)
        times, _ = self._axes()
        finite = np.isfinite(x).all(axis=1)
        report = self.detector.fit(
            x[finite],
            k=self.k,
            times=None if times is None else times[finite],
            max_gap=self.config.context.gap_steps,
        )
        self.extras = Extras(info={"k_selected": report.k_selected, "fit_weights": report.weights})

    def score_many(self, x: np.ndarray) -> np.ndarray:
        from streammoe.files.offline import score_stream

        _, times = self._axes()
        result, self.detector = score_stream(
            x,
            self.detector,
            self.detector.channels,
            learn=self.learn,
            batch_size=self.batch_size,
            times=times,
            cascade=self.detector.config.cascade.enabled,
        )
        self._flagged = result.is_anomaly.astype(np.int8)
        self.extras.mode = result.mode
        self.extras.calibrated_score = result.calibrated_score
        self.extras.calibrated_threshold = float(-np.log10(self.config.threshold))
        self.extras.n_experts = result.n_experts
        self.extras.events = [(row, ev.kind, ev.expert) for row, ev in result.events]
        self.extras.critical = result.critical
        self.extras.at_once = result.at_once
        self.extras.mode_added = result.mode_added
        self.extras.info["experts_at_end"] = int(self.detector.model.n_active)
        return result.score

    def decide(self, scores: np.ndarray) -> np.ndarray:
        return self._flagged
