"""Which fit rows calibrate, with a time context: held out in blocks of each asset's time, with a guard.

With a window of W records, a row's input is made of its asset's last W records. Rows held out at random (the
fit's split without a context) then share most of their window with the training rows around them, so the
experts have all but seen them and the calibration they give is too narrow (a toy run: more fit data, more false
alarms). Here each asset's rows are cut into blocks in time (at most BLOCK_WINDOWS windows long); one block in
1 / fraction is held out, and the W - 1 rows on either side of a held-out block train nothing (their windows
overlap it), so no held-out row shares a record with a training row. A short fit (the fit's own rule) holds out
the last quarter of each asset's rows instead, guarded the same way; a fit of many short assets holds out one
asset in 1 / fraction whole.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BLOCK_WINDOWS = 20  # a block is this many windows long: the guard costs 2 (W - 1) rows per held-out block


def asset_ranks(assets: Sequence[str] | np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's asset (an index), its position among that asset's rows (in the given order) and the asset's
    row count."""
    if assets is None:
        return np.zeros(n, dtype=np.int64), np.arange(n), np.full(n, n)
    _, group = np.unique(np.asarray(assets, dtype=str), return_inverse=True)
    group = group.reshape(-1)
    order = np.argsort(group, kind="stable")
    counts = np.bincount(group)
    first = np.cumsum(counts) - counts
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - np.repeat(first, counts)
    return group, rank, counts[group]


def block_split(
    assets: Sequence[str] | np.ndarray | None,
    n: int,
    window: int,
    short: bool,
    fraction: float = 0.1,
    short_fraction: float = 0.25,
) -> tuple[np.ndarray, np.ndarray]:
    """(held out, guarded) row masks of length n.

    `short` (a short fit, one stretch of time): the last `short_fraction` of each asset's rows. Otherwise each
    asset long enough is cut into `every` = round(1 / fraction) or more blocks (of at most BLOCK_WINDOWS windows,
    at least two) and one block in `every` is held out; if that holds out less than half the wanted share (many
    short assets, as in a warm-up of many), one short asset in `every` is held out whole (it shares no window
    with any other), so the held-out rows still span the fit's whole time."""
    group, rank, count = asset_ranks(assets, n)
    guard = window - 1
    if short:
        end = count - (count * short_fraction).astype(np.int64)
        hold = rank >= end
        return hold, ~hold & (rank >= end - guard)
    every = max(2, round(1 / fraction))
    length = np.clip(count // every, 2 * window, BLOCK_WINDOWS * window)
    long = count >= every * 2 * window
    block, at = rank // length, rank % length
    hold = long & (block % every == every - 1)
    after = (block % every == 0) & (block > 0) & (at < guard)  # windows reaching back into a held-out block
    before = (block % every == every - 2) & (at >= length - guard)  # rows inside a held-out block's windows
    guarded = long & (after | before) & ~hold
    if hold.sum() < fraction * n / 2:
        short_assets = np.unique(group[~long])
        whole = short_assets[np.arange(len(short_assets)) % every == every - 1]
        if len(short_assets) > 1 and len(whole) == 0:
            whole = short_assets[-1:]
        hold |= np.isin(group, whole)
    return hold, guarded
