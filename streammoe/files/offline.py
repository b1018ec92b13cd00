"""Score a series file prequentially: each micro-batch is scored first, then learned from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from streammoe.config import AlertSettings
from streammoe.context.inputs import DEFAULT_ASSET
from streammoe.incidents import critical_records, opens_at_once
from streammoe.incidents.settings import SPIKE_DEVIATION
from streammoe.model.config import ModelConfig
from streammoe.model.detector import MixtureDetector, ScoredBatch
from streammoe.novelty.events import ModeEvent

TOP_CHANNELS = 3
CRITICAL_P_VALUE: float = AlertSettings.model_fields["critical_p_value"].default  # what the daemon calls critical


@dataclass
class StreamResult:
    """One value per input row; warm-up rows have score 0, is_anomaly 0 and mode -1.

    `score` is the mixture's negative log-likelihood (it ranks rows best, for AUC); `calibrated_score` is
    -log10 of the per-mode p-value, the scale on which `is_anomaly` is decided and alerts are reported.
    Rows with missing values (NaN: an empty cell) are scored on the channels present, never learned, and
    `missing_channels` names what they missed (';'-joined); a row with no value at all, or with an infinite one,
    gets score +inf and is_anomaly 1.
    """

    score: np.ndarray
    calibrated_score: np.ndarray
    is_anomaly: np.ndarray
    mode: np.ndarray
    mode_entropy: np.ndarray
    p_value: np.ndarray
    nll: np.ndarray
    epistemic: np.ndarray
    aleatoric: np.ndarray
    top_channels: list[str]
    n_experts: np.ndarray  # experts active when the row was scored
    missing_channels: list[str] = field(default_factory=list)  # per row: the channels it was scored without
    # Mode events raised while learning, each with the number of rows scored when it was raised (the end of
    # its batch): how long after a switch a new expert came is read from here.
    events: list[tuple[int, ModeEvent]] = field(default_factory=list)
    # Alerted rows of critical severity (p-value below the critical one, not finite, out of range), the rows
    # among them that open an incident at once (incidents.opens_at_once: spikes, poison) and each row's misfit
    # share per channel (0 for warm-up rows): what the incident tracker takes.
    critical: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    at_once: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    channel_share: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    deviation: np.ndarray = field(default_factory=lambda: np.zeros(0))  # ScoredBatch.deviation (0: warm-up rows)

    @property
    def mode_added(self) -> list[tuple[int, int, int]]:
        """(expert, first row, last row) of each new expert's records (refs are row indices here)."""
        return [
            (ev.expert, int(ev.first_ref), int(ev.last_ref))
            for _, ev in self.events
            if ev.kind == "mode_added" and ev.first_ref is not None and ev.last_ref is not None
        ]

    @classmethod
    def empty(cls, n: int, n_channels: int = 0) -> StreamResult:
        return cls(
            score=np.zeros(n),
            calibrated_score=np.zeros(n),
            is_anomaly=np.zeros(n, dtype=np.int8),
            mode=np.full(n, -1),
            mode_entropy=np.zeros(n),
            p_value=np.ones(n),
            nll=np.full(n, np.nan),
            epistemic=np.zeros(n),
            aleatoric=np.zeros(n),
            top_channels=[""] * n,
            n_experts=np.zeros(n, dtype=np.int32),
            missing_channels=[""] * n,
            critical=np.zeros(n, dtype=bool),
            at_once=np.zeros(n, dtype=bool),
            channel_share=np.zeros((n, n_channels), dtype=np.float32),
            deviation=np.zeros(n),
        )

    def put(
        self,
        start: int,
        scored: ScoredBatch,
        channels: list[str],
        n_experts: int,
        critical_p_value: float = CRITICAL_P_VALUE,
        spike_deviation: float = SPIKE_DEVIATION,
    ) -> None:
        end = start + len(scored)
        log_crit = float(np.log(critical_p_value))
        self.critical[start:end] = critical_records(
            scored.is_anomaly, scored.valid, scored.in_range, scored.log_p_value, log_crit
        )
        self.at_once[start:end] = opens_at_once(
            scored.is_anomaly,
            scored.valid,
            scored.in_range,
            scored.log_p_value,
            log_crit,
            scored.deviation,
            spike_deviation,
        )
        if scored.deviation is not None:
            self.deviation[start:end] = scored.deviation
        self.channel_share[start:end] = np.nan_to_num(scored.channel_share, nan=0.0, posinf=0.0, neginf=0.0)
        self.score[start:end] = np.where(scored.valid, scored.nll, np.inf)
        self.calibrated_score[start:end] = scored.score
        self.is_anomaly[start:end] = scored.is_anomaly
        self.mode[start:end] = scored.mode
        self.mode_entropy[start:end] = scored.mode_entropy
        self.p_value[start:end] = scored.p_value
        self.nll[start:end] = scored.nll
        self.epistemic[start:end] = scored.epistemic
        self.aleatoric[start:end] = scored.aleatoric
        self.n_experts[start:end] = n_experts
        names = scored.names(channels)  # with a context also features, `d(flow):0.412`
        for i in range(len(scored)):
            self.top_channels[start + i] = ";".join(
                f"{names[c]}:{share:.3f}" for c, share in scored.top_channels(i, TOP_CHANNELS)
            )


def score_stream(
    values: np.ndarray,
    detector: MixtureDetector | None,
    channels: list[str],
    config: ModelConfig | None = None,
    warmup: int = 0,
    learn: bool = True,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
    times: np.ndarray | None = None,
    asset: str = DEFAULT_ASSET,
    spike_deviation: float = SPIKE_DEVIATION,
    cascade: bool = False,
) -> tuple[StreamResult, MixtureDetector]:
    """Run the prequential loop over `values` (N, C). Without a detector, fit one on the first `warmup` rows.

    The series is one asset (`asset`) for the context; `times` is its time axis in median steps
    (context/timeline.py; None: one step per row), against which `context.gap_steps` counts a gap.
    `spike_deviation` is `IncidentSettings.spike_deviation`, for the rows that open an incident at once.
    `cascade` True scores as the daemon does (`ModelConfig.cascade`, when enabled); False, `streammoe score`'s
    way, gives every record the full pass, so the score column is one ranking (docs/model.md)."""
    n = len(values)
    out = StreamResult.empty(n, values.shape[1])
    missing = np.isnan(values)  # an empty cell: scored on the other channels
    for i in np.flatnonzero(missing.any(axis=1)):
        out.missing_channels[i] = ";".join(channels[c] for c in np.flatnonzero(missing[i]))
    start = 0
    axis = None if times is None else np.asarray(times, np.float64)
    if detector is None:
        if warmup < 10:
            raise ValueError("without a model, --warmup must give at least 10 rows to learn from")
        finite = np.isfinite(values[:warmup]).all(axis=1)
        detector = MixtureDetector(values.shape[1], config, channels)
        gap = detector.config.context.gap_steps
        warm_times = None if axis is None else axis[:warmup][finite]
        detector.fit(values[:warmup][finite], assets=np.full(int(finite.sum()), asset), times=warm_times, max_gap=gap)
        start = min(warmup, n)
        if progress is not None:
            progress(start)
    while start < n:
        batch = values[start : start + batch_size]
        gaps = missing[start : start + batch_size]
        scored = detector.score_many(
            batch,
            refs=np.arange(start, start + len(batch)),
            missing=gaps if gaps.any() else None,
            assets=np.full(len(batch), asset),
            times=None if axis is None else axis[start : start + len(batch)],
            max_gap=detector.config.context.gap_steps,
            cascade=cascade,
        )
        out.put(start, scored, channels, detector.model.n_active, spike_deviation=spike_deviation)
        if learn:
            report = detector.learn_many(scored)
            out.events += [(start + len(batch), ev) for ev in report.events]
        start += len(batch)
        if progress is not None:
            progress(len(batch))
    return out, detector
