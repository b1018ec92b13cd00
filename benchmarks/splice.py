"""Real data spliced into a switch: an SMD machine's training part, then another machine's, made a new mode.

The second machine's channels are offset by a large constant (far outside the first machine's range), and one
channel that is constant on the first machine starts to move: the two things that made new plant modes
unlearnable (a saturated scaler, a variance floor) on real rather than simulated values. Only training parts
are used, so every record is normal and every flag is a false alarm.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.multimode import SwitchRun
from benchmarks.tracks import T3_PAIRS, BenchOptions, FitCache, Observer, TrackResult, load

OFFSET = 100.0  # SMD channels are min-max scaled to about [0, 1]: 100 is two orders of magnitude outside


def splice(a: np.ndarray, b: np.ndarray, records: int) -> tuple[np.ndarray, SwitchRun, int | None]:
    """Fit data (a's first `records`), the switch run (a's next `records`, then b's first `records` + OFFSET with
    one of a's constant channels moving), and that channel's index (None when a has no constant channel)."""
    fit, old, new = a[:records], a[records : 2 * records], b[:records].astype(np.float64) + OFFSET
    if len(old) < records or len(new) < records:
        raise ValueError(f"need {2 * records} rows of the first machine and {records} of the second")
    seen = a[: 2 * records]
    constant = np.flatnonzero(np.ptp(seen, axis=0) == 0)
    moving_b = np.flatnonzero(np.ptp(new, axis=0) > 0)
    channel = int(constant[0]) if len(constant) else None
    if channel is not None and len(moving_b):
        source = channel if channel in moving_b else int(moving_b[0])
        new[:, channel] = new[:, source]
    values = np.concatenate([old.astype(np.float64), new])
    return fit, SwitchRun(-1, -1, values, records), channel


def run_splice(
    opts: BenchOptions, cache: FitCache, records: int = 2400, observe: Observer | None = None
) -> TrackResult | None:
    """The T4B measurement on SMD pairs (opts.pairs, default T3's); None when the SMD files are absent."""
    from benchmarks.t4 import run_switches

    root = Path(opts.data_root) / "smd"
    pairs = [
        (a, b)
        for a, b in (opts.pairs or T3_PAIRS)
        if (root / f"{a}.train.csv.gz").exists() and (root / f"{b}.train.csv.gz").exists()
    ]
    if opts.series_filter is not None:
        pairs = [(a, b) for a, b in pairs if opts.series_filter in f"{a}->{b}"]
    if opts.max_series is not None:
        pairs = pairs[: opts.max_series]
    if not pairs:
        return None
    runs, notes = [], []
    for a, b in pairs:
        fit, sw, channel = splice(
            load(root / f"{a}.train.csv.gz").values, load(root / f"{b}.train.csv.gz").values, records
        )
        runs.append((f"{a}->{b}", fit, sw))
        notes.append(
            f"{a}->{b}: channel {channel} of {a} is constant over its first {2 * records} rows and moves "
            f"after the splice"
            if channel is not None
            else f"{a}->{b}: {a} has no constant channel"
        )
    title = (
        f"SPLICE: SMD a.train then b.train + {OFFSET:g} (one of a's constant channels set moving); fit on a's "
        f"first {records} rows, stream a's next {records} then b's first {records}, learning on"
    )
    track = run_switches("SPLICE", title, runs, opts, cache, observe)
    track.notes += notes
    return track
