"""A new expert settles: its calibration measures the mode's real spread before clipping holds it to it.

A candidate is trained on one run of the memory (about 350 records) and calibrated on the 150 after them, so
it knows a narrow slice of its mode. The mode's next records spread wider; those past the learning threshold
enter the calibration clipped to its score, more than the tail's 5 % of them soon sit there, the tail
collapses onto the clipped value and the expert alerts on its own mode for good, learning nothing (on T3's new
machines 5–80 % of records for tens of thousands of records).

So for `settle_records` after it was added, while at least `settle_share` of an expert's records go
unexplained (counted by the short-term memory over about its last `lockin_window` records), its records enter
its calibration unclipped: the tail is measured, records that then pass the learning threshold teach it, and
the share falls back under `settle_share`, where clipping holds again. A calibrated expert sees about 1 % of
its records unexplained, so scattered anomalies at twice that in a new mode (tested at 2 %) stay clipped and
keep alerting.
A fault as frequent as `settle_share` in a mode that is still settling is measured as part of it; experts the
model was fitted with never settle, so faults in known modes are untouched (the lock-in breaker's
re-measurement of any expert absorbed the demo's drift and stuck sensor: novelty/lockin.py).
"""

from __future__ import annotations

from torch import Tensor

from streammoe.model.memory import MIN_MISFITS
from streammoe.model.mixture import MixtureOfVAEs


def settling(model: MixtureOfVAEs) -> Tensor:
    """(k_max,) bool: experts whose records enter the calibration unclipped now (a fault mode's are never
    calibrated at all, so its status needs no check here)."""
    cfg, memory = model.config.novelty, model.memory
    young = (memory.seen - model.born) < cfg.settle_records
    return young & model.active & (memory.misfits >= MIN_MISFITS) & (memory.unexplained_share() >= cfg.settle_share)
