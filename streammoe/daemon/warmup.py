"""Records a scope collects for its first fit, while it has no model yet (one buffer per scope)."""

from __future__ import annotations

import numpy as np

from streammoe.daemon.accounting import RunSummary
from streammoe.logs import get_logger
from streammoe.metrics import Metrics
from streammoe.model.scaler import implausible_rows

log = get_logger("streammoe.daemon")


class WarmUp:
    def __init__(self, needed: int, metrics: Metrics, summary: RunSummary) -> None:
        self.needed = needed  # STREAMMOE_CHECKPOINT__WARMUP_RECORDS
        self.metrics, self.summary = metrics, summary
        self._collected: dict[str, list[np.ndarray]] = {}

    def collect(self, scope: str, values: np.ndarray) -> np.ndarray | None:
        """Keep `values` for the scope's first fit; once there are enough, return the fit set (and forget it).

        Implausible readings are left out of the fit set: a few like 1e30 would otherwise set a channel's scale
        and blind it."""
        collected = self._collected.setdefault(scope, [])
        collected.append(values)
        self.metrics.warmup_records.inc(len(values))
        self.summary.warmup += len(values)
        if sum(len(v) for v in collected) < self.needed:
            return None
        x = np.concatenate(collected)
        del self._collected[scope]
        absurd = implausible_rows(x)
        if absurd.any():
            self.metrics.poison_records.labels("warmup_out_of_range").inc(int(absurd.sum()))
            log.warning("warmup_records_left_out", records=int(absurd.sum()), reason="out_of_range")
            x = x[~absurd]
        return x

    def forget(self, scope: str) -> None:
        """The scope went to another worker: its records are its new owner's to collect."""
        self._collected.pop(scope, None)
