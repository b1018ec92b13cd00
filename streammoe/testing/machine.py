"""The synthetic machine that tests, benchmarks and the demo's checks share.

Each operating mode is a linear factor model: a few hidden drivers (`factors`) mixed into the channels, around the
mode's centre, plus sensor noise. The channels are correlated within a mode, as on a real machine, and the modes
differ in where they sit and in how their channels move together. The machine's shape (centres, mixing) comes
from `shape_seed` alone, so the rows to fit on and the rows streamed later come from one machine whatever seed
draws them. With `factors=0` a mode is white noise around its centre.

For setpoint-driven modes with dynamics and injected process faults see `streammoe.testing.process`.
"""

from __future__ import annotations

import numpy as np


class Machine:
    """`modes` operating modes of a machine with `channels` sensors; `rows()` draws records from it."""

    def __init__(
        self,
        channels: int,
        modes: int = 1,
        factors: int = 2,
        *,
        spread: float = 0.0,
        noise: float = 0.3,
        shape_seed: int = 42,
        centres: np.ndarray | None = None,
        mixing: np.ndarray | None = None,
    ) -> None:
        """`spread`: the standard deviation of the modes' centres around the origin (0: every mode centred there);
        `centres` (modes, channels) places them by hand instead, and `mixing` (modes, factors, channels) the way
        the factors move the channels (by default drawn from `shape_seed`)."""
        shape = np.random.default_rng(shape_seed)
        self.channels, self.modes, self.factors, self.noise = channels, modes, factors, noise
        if centres is not None:
            self.centres = np.asarray(centres, np.float64).reshape(modes, channels)
        elif spread > 0:
            self.centres = shape.normal(0, spread, (modes, channels))
        else:
            self.centres = np.zeros((modes, channels))
        if mixing is not None:
            self.mixing = np.asarray(mixing, np.float64).reshape(modes, factors, channels)
        else:
            self.mixing = shape.normal(0, 1, (modes, factors, channels))

    def rows(self, rng: np.random.Generator | int, n: int, mode: int | np.ndarray | None = None) -> np.ndarray:
        """`n` rows (float32, shape (n, channels)); `mode` picks the mode of every row (an int) or of each row
        (an array); by default each row's mode is drawn uniformly."""
        rng = np.random.default_rng(rng) if isinstance(rng, int) else rng
        if mode is None:
            which = rng.integers(0, self.modes, n) if self.modes > 1 else np.zeros(n, np.int64)
        else:
            which = np.broadcast_to(np.asarray(mode, np.int64), (n,))
        z = rng.normal(0, 1, (n, self.factors))
        x = self.centres[which]
        for m in np.unique(which):
            at = which == m
            x[at] += z[at] @ self.mixing[m]
        if self.noise:  # a noiseless machine (the demo pump's drivers) draws none
            x += rng.normal(0, self.noise, (n, self.channels))
        return x.astype(np.float32)
