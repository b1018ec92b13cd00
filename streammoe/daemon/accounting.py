"""What the loop tells its metrics: how long each stage took, and what a scope's model learned."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from streammoe.logs import get_logger
from streammoe.metrics import Metrics
from streammoe.model.detector import LearnReport
from streammoe.state.checkpoint import ModelState

log = get_logger("streammoe.daemon")


@dataclass
class RunSummary:
    """What a run handled, returned by `Daemon.run` and logged at shutdown."""

    records_in: int = 0
    alerts: int = 0
    non_alerts: int = 0
    dead_letters: int = 0
    warmup: int = 0
    batches: int = 0
    seconds: float = 0.0
    busy_seconds: float = 0.0  # from the first batch's arrival to the last batch's acknowledgement
    read_ahead: int = 0  # batches fetched and decoded while the batch before them was being judged

    def totals(self) -> dict[str, int | float]:
        """The run's totals as the `daemon_stopped` log line names them (`records`: records_in)."""
        return {
            "records": self.records_in,
            "alerts": self.alerts,
            "non_alerts": self.non_alerts,
            "dead_letters": self.dead_letters,
            "warmup": self.warmup,
            "batches": self.batches,
            "seconds": round(self.seconds, 2),
        }


@contextmanager
def timed(metrics: Metrics, stage: str) -> Iterator[None]:
    """Time one stage of a batch into streammoe_stage_seconds{stage}."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        metrics.stage_seconds.labels(stage).observe(time.perf_counter() - t0)


def account_learning(metrics: Metrics, state: ModelState, report: LearnReport | None) -> None:
    """A scope's learning counters and its experts' gauges; with no report (fitted or restored), the gauges only."""
    scope, detector = state.scope, state.detector
    if detector is None:
        return
    if report is not None:
        metrics.records_learned.inc(report.learned)
        if report.skipped_step:
            metrics.learn_steps_skipped.labels(report.skipped_step).inc()
        if report.drift:
            metrics.drifts.labels(scope).inc()
            log.info("likelihood_drift", scope=scope, detections=detector.counters["drifts"])
        for event in report.events:
            metrics.mode_events.labels(event.kind).inc()
            log.info("mode_event", **event.as_dict())
    if not metrics.scope_series(scope):  # beyond STREAMMOE_HTTP__MAX_SCOPE_SERIES: counted, not exported
        return
    metrics.experts_active.labels(scope).set(detector.model.n_active)
    for k, w in enumerate(detector.mixture_weights()):
        metrics.mixture_weight.labels(scope, str(k)).set(float(w))
