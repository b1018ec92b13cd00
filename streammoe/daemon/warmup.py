"""Records a scope collects for its first fit, while it has no model yet (one buffer per scope).

The records keep their asset and `ts`, in arrival order, so the first fit builds each asset's time context as
scoring does, and ends holding every asset's latest records (the context of the first scored batch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streammoe.daemon.accounting import RunSummary
from streammoe.logs import get_logger
from streammoe.metrics import Metrics
from streammoe.model.scaler import implausible_rows

log = get_logger("streammoe.daemon")


@dataclass
class FitSet:
    """A scope's warm-up records: values (N, C), each one's asset and `ts` (epoch ms), in arrival order."""

    values: np.ndarray
    assets: np.ndarray
    ts: np.ndarray

    def __len__(self) -> int:
        return len(self.values)


class WarmUp:
    def __init__(self, needed: int, metrics: Metrics, summary: RunSummary) -> None:
        self.needed = needed  # STREAMMOE_CHECKPOINT__WARMUP_RECORDS
        self.metrics, self.summary = metrics, summary
        self._collected: dict[str, list[FitSet]] = {}

    def collect(
        self, scope: str, values: np.ndarray, assets: np.ndarray | None = None, ts: np.ndarray | None = None
    ) -> FitSet | None:
        """Keep `values` for the scope's first fit; once there are enough, return the fit set (and forget it).

        `assets` and `ts` (default: one asset, ts 0) are each record's, for the context. Implausible readings
        are left out of the fit set: a few like 1e30 would otherwise set a channel's scale
        and blind it."""
        collected = self._collected.setdefault(scope, [])
        n = len(values)
        assets = np.full(n, "") if assets is None else np.asarray(assets, dtype=str)
        collected.append(FitSet(values, assets, np.zeros(n, np.int64) if ts is None else np.asarray(ts, np.int64)))
        self.metrics.warmup_records.inc(len(values))
        self.summary.warmup += len(values)
        if sum(len(v) for v in collected) < self.needed:
            return None
        fit = FitSet(*(np.concatenate([getattr(c, f) for c in collected]) for f in ("values", "assets", "ts")))
        del self._collected[scope]
        absurd = implausible_rows(fit.values)
        if absurd.any():
            self.metrics.poison_records.labels("warmup_out_of_range").inc(int(absurd.sum()))
            log.warning("warmup_records_left_out", records=int(absurd.sum()), reason="out_of_range")
            fit = FitSet(fit.values[~absurd], fit.assets[~absurd], fit.ts[~absurd])
        return fit

    def forget(self, scope: str) -> None:
        """The scope went to another worker: its records are its new owner's to collect."""
        self._collected.pop(scope, None)
