"""A series file's `timestamp` column as a time axis for the context: in units of the series' own median step.

Offline, a gap is counted in steps of the series itself (SKAB files have 33-247 s gaps inside a 1 s cadence),
so one `gap_steps` setting serves files of any cadence. Timestamps are read as numbers, else as ISO datetimes;
a column that is neither gives no time axis (no record is refused for it: the context then never resets).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from streammoe.logs import get_logger

log = get_logger("streammoe.context")


def parse_times(timestamps: Sequence[str]) -> np.ndarray | None:
    """Seconds (or the column's own numbers) as float64, NaN where a value is empty; None if unparseable."""
    raw = np.asarray(list(timestamps), dtype=str)
    blank = np.char.strip(raw) == ""
    filled = np.where(blank, "0", raw)
    try:
        out = filled.astype(np.float64)
    except ValueError:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # numpy warns about (and drops) a timezone suffix
                out = filled.astype("datetime64[ns]").astype(np.int64).astype(np.float64) / 1e9
        except ValueError:
            return None
    out[blank] = np.nan
    return out


def in_steps(times: np.ndarray) -> np.ndarray:
    """`times` divided by the median of the positive steps between consecutive rows (1 if there is none)."""
    steps = np.diff(times)
    steps = steps[np.isfinite(steps) & (steps > 0)]
    median = float(np.median(steps)) if len(steps) else 1.0
    return times / median


def series_axis(timestamps: Sequence[str], what: str = "series") -> np.ndarray | None:
    """The time axis of a series file for the context (median steps), or None with a warning."""
    times = parse_times(timestamps)
    if times is None:
        log.warning(
            "context_timestamps_unparsed",
            series=what,
            hint="timestamps are neither numbers nor ISO datetimes: the context never resets on a gap",
        )
        return None
    return in_steps(times)
