"""A drift signal on the stream's mixture log-likelihood, from river's ADWIN.

It watches the per-batch median NLL of valid records (the median, so a few anomalies in a batch do not move
it) and reports when ADWIN finds that the recent level differs from the older one. It is a signal for the
operator (metric, log, `LearnReport.drift`), not a trigger: new experts come only from the short-term memory's
evidence. Its state is small and not checkpointed; after a restart it re-learns the level within a few batches.
"""

from __future__ import annotations

import math

import torch
from river.drift import ADWIN


class LikelihoodDrift:
    def __init__(self, delta: float = 0.002) -> None:
        self.delta = delta
        self.detector = ADWIN(delta=delta, clock=1)  # one update per batch: check at every one
        self.detections = 0

    def update(self, nll: torch.Tensor) -> bool:
        """Feed one batch's NLLs (non-finite ones ignored); True when a drift is detected at this batch."""
        finite = nll[torch.isfinite(nll)]
        if finite.numel() == 0:
            return False
        level = float(finite.median())
        if not math.isfinite(level):
            return False
        self.detector.update(level)
        if self.detector.drift_detected:
            self.detections += 1
            return True
        return False
