"""A small multi-mode chemical process with PI control, operating modes and injectable faults.

It is the development stand-in for plant data: 46 correlated channels (measurements and valve positions),
six operating modes that differ by setpoints and product mix (some valves parked at exactly 0 % in one mode
and moving in another), six fault kinds and abrupt mode switches. docs/process-simulator.md is its
specification; this module implements it and must not be tuned to a detector's results.

The plant is integrated one record at a time (the control loops are sequential by nature) on Python floats,
which is faster than numpy for a state this small; noise, disturbances and faults are drawn and shaped as whole
arrays, so a run is deterministic given its seed and thousands of records take a few tens of milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from streammoe.testing.process_spec import (
    ANALYSER_PERIOD,
    CHANNELS,
    CUTOFF,
    DIST_PHI,
    DIST_SIGMA,
    FAULT_KINDS,
    MODES,
    NOISE,
    Mode,
)

__all__ = ["CHANNELS", "FAULT_KINDS", "MODES", "Fault", "Mode", "Run", "simulate"]

BURN_IN = 600
FEED_MAX = (1.2, 9000.0, 9000.0, 6.0)  # kscmh, kg/h, kg/h, kscmh at 100 % valve
FEED_UNIT = (0.5, 3600.0, 3600.0, 2.0)  # the flows the normalised balances count as 1
CHANNEL_INDEX = {name: i for i, name in enumerate(CHANNELS)}
# Disturbance indices (process_spec.DIST_*): supply pressures of feeds A, D, E, C, cooling water inlet
# temperature, condenser water inlet temperature, kinetics, feed A purity, steam header, cooling water supply.
D_KIN, D_PURITY, D_CW_IN, D_CW_SUPPLY = 6, 7, 4, 9


@dataclass(frozen=True)
class Fault:
    """One fault from record `start` (index in the run) to `end` (exclusive; None: to the end of the run)."""

    kind: str
    start: int
    magnitude: float = 1.0
    end: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; known: {FAULT_KINDS}")
        if self.start < 0 or (self.end is not None and self.end <= self.start):
            raise ValueError(f"fault {self.kind}: need 0 <= start < end, got {self.start}..{self.end}")


@dataclass
class Run:
    """A simulated run: `values` (N, C) in engineering units, `labels` 1 while a fault is active, `mode` per record."""

    values: np.ndarray
    labels: np.ndarray
    mode: np.ndarray
    channels: tuple[str, ...]
    seed: int

    def column(self, name: str) -> np.ndarray:
        return self.values[:, CHANNEL_INDEX[name]]


def _schedule(modes: int | Sequence[tuple[int, int]], n: int | None) -> list[tuple[int, int]]:
    if isinstance(modes, int):
        if n is None:
            raise ValueError("simulate(mode, n): give the number of records")
        segments = [(modes, n)]
    else:
        segments = [(int(m), int(k)) for m, k in modes]
    for m, k in segments:
        if not 0 <= m < len(MODES):
            raise ValueError(f"mode {m} does not exist; modes are 0..{len(MODES) - 1}")
        if k <= 0:
            raise ValueError(f"a segment needs at least one record, got {k} for mode {m}")
    return segments


def _setpoints(segments: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Per record of burn-in + run: the mode index and its setpoint vector (Mode fields in order)."""
    per_mode = np.array([MODES[m].setpoints() for m, _ in segments])
    counts = np.array([k for _, k in segments])
    counts[0] += BURN_IN
    idx = np.repeat(np.arange(len(segments)), counts)
    return np.repeat([m for m, _ in segments], counts), per_mode[idx]


def _disturbances(rng: np.random.Generator, total: int) -> np.ndarray:
    """AR(1) disturbances (total, D), stationary from the first record; one vector step per record."""
    phi, sigma = np.asarray(DIST_PHI), np.asarray(DIST_SIGMA)
    eps = rng.standard_normal((total, len(phi))) * sigma * np.sqrt(1 - phi**2)
    eps[0] = rng.standard_normal(len(phi)) * sigma
    out = np.empty_like(eps)
    acc = eps[0].copy()
    out[0] = acc
    for t in range(1, total):
        acc = phi * acc + eps[t]
        out[t] = acc
    return out


def _apply_faults(
    faults: Sequence[Fault], dist: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Add the disturbance-borne faults to `dist` in place; return labels, the valve deadband and the sensor bias."""
    labels = np.zeros(n, np.int8)
    deadband = np.zeros(BURN_IN + n)
    bias = np.zeros(BURN_IN + n)
    for f in faults:
        if f.start >= n:
            raise ValueError(f"fault {f.kind} starts at {f.start}, after the run's {n} records")
        end = n if f.end is None else min(f.end, n)
        labels[f.start : end] = 1
        a, b = BURN_IN + f.start, BURN_IN + end
        t = np.arange(b - a, dtype=np.float64)
        m = f.magnitude
        if f.kind == "step":
            dist[a:b, D_CW_IN] += 5.0 * m
        elif f.kind == "drift":
            dist[a:b, D_KIN] -= 3e-4 * m * t
        elif f.kind == "variation":
            kernel = np.exp(-np.arange(25) / 5.0)
            kernel *= DIST_SIGMA[D_PURITY] * 12.0 * m / np.sqrt((kernel**2).sum())
            dist[a:b, D_PURITY] += np.convolve(rng.standard_normal(b - a + 24), kernel, mode="valid")
        elif f.kind == "sticking":
            deadband[a:b] = 3.0 * m
        elif f.kind == "bias":
            bias[a:b] = 2.0 * m
        elif f.kind == "oscillation":
            dist[a:b, D_CW_SUPPLY] += 0.10 * m * np.sin(2 * math.pi * t / 30.0)
    return labels, deadband, bias


def simulate(
    modes: int | Sequence[tuple[int, int]], n: int | None = None, faults: Sequence[Fault] = (), seed: int = 0
) -> Run:
    """Simulate one run: `modes` is a mode index (with `n` records) or a schedule [(mode, records), ...] whose
    switches are abrupt setpoint changes. Faults index the run's records. The plant first settles for BURN_IN
    records in the first mode; those are not returned."""
    segments = _schedule(modes, n)
    total_n = sum(k for _, k in segments)
    rng = np.random.default_rng(seed)
    mode_per, sp = _setpoints(segments)
    total = len(sp)
    dist = _disturbances(rng, total)
    noise = rng.standard_normal((total, len(CHANNELS))) * np.asarray(NOISE)
    labels, deadband, bias = _apply_faults(faults, dist, total_n, rng)
    true = _integrate(sp, dist, noise, deadband, bias)
    values = _measure(true + noise, bias)
    return Run(values[BURN_IN:], labels, mode_per[BURN_IN:].astype(np.int16), CHANNELS, seed)


def _measure(meas: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """What the transmitters report: low-flow cut-off, the biased sensor, analysers sampled and held."""
    out = meas.copy()
    for name, cutoff in CUTOFF.items():
        col = out[:, CHANNEL_INDEX[name]]
        col[col < cutoff] = 0.0
    out[:, CHANNEL_INDEX["stripper_temp"]] += bias
    held = (np.arange(len(out)) // ANALYSER_PERIOD) * ANALYSER_PERIOD
    for name in ("product_g_pct", "product_impurity_pct", "purge_a_pct", "purge_c_pct"):
        c = CHANNEL_INDEX[name]
        out[:, c] = out[held, c]
    return out


def _pi(op: float, kc: float, ti: float, e: float, e_prev: float) -> float:
    """Velocity-form PI step, clipped to the valve's travel: clipping is its own anti-windup, so a loop that
    saturates parks its valve at exactly 0 or 100 %."""
    op += kc * (e - e_prev) + kc / ti * e
    return 0.0 if op < 0.0 else min(op, 100.0)


def _pi_clamped(integral: float, kc: float, ti: float, e: float) -> tuple[float, float]:
    """Position-form PI whose integral stops while the valve is at a stop: the anti-surge valve, which is shut
    whenever the compressor has flow to spare and must then read exactly 0 %, not blip open on noise."""
    op = kc * e + integral
    if op <= 0.0:
        return 0.0, integral if e <= 0.0 else integral + kc / ti * e
    if op >= 100.0:
        return 100.0, integral if e >= 0.0 else integral + kc / ti * e
    return op, integral + kc / ti * e


def _integrate(
    sp: np.ndarray, dist: np.ndarray, noise: np.ndarray, deadband: np.ndarray, bias: np.ndarray
) -> np.ndarray:
    """The plant and its loops, one record at a time; returns the true value of every channel per record."""
    ix = CHANNEL_INDEX
    rows: list[tuple[float, ...]] = []
    spl, dl, nl, dbl, bl = sp.tolist(), dist.tolist(), noise.tolist(), deadband.tolist(), bias.tolist()
    n_feed = [ix[f"feed_{f}_flow"] for f in "adec"]
    # State: feed flows and valves, then the units; initial values near mode 0's steady state.
    flow = [FEED_UNIT[i] for i in range(4)]
    fv = [100 * FEED_UNIT[i] / FEED_MAX[i] for i in range(4)]
    fe = [0.0] * 4
    tr, pr, lr, ts, ls, tst, lst = 120.0, 2700.0, 65.0, 80.0, 50.0, 95.0, 50.0
    fcw, fcond, fst, v_cw_pos = 40.0, 49.0, 480.0, 40.0
    v_cw, v_purge, v_eff, v_cond, v_sep, v_as, v_steam, v_prod = 40.0, 43.0, 53.0, 49.0, 41.0, 0.0, 48.0, 48.0
    e_tr = e_pr = e_lr = e_ts = e_ls = e_tst = e_lst = i_as = 0.0
    x_g, imp, y_a, y_c = 50.0, 2.0, 15.0, 78.0
    for t in range(len(spl)):
        s, d, nz = spl[t], dl[t], nl[t]
        # Feed flow loops (A, D, E, C): a zero setpoint is manual at 0 %, not a loop chasing zero.
        u = [0.0] * 4
        for i in range(4):
            flow[i] += (FEED_MAX[i] * fv[i] / 100 * (1 + d[i]) - flow[i]) / 2.0
            u[i] = flow[i] / FEED_UNIT[i]
            if s[i] <= 0.0:
                fv[i], fe[i] = 0.0, 0.0
                continue
            e = 100 * (s[i] - (flow[i] + nz[n_feed[i]])) / FEED_MAX[i]
            fv[i] = _pi(fv[i], 0.6, 3.0, e, fe[i])
            fe[i] = e
        ua, ud, ue, uc = u[0] * (1 + d[D_PURITY]), u[1], u[2], u[3]
        # Reactor: A + D -> G, A + E -> H, exothermic, cooled by water; level and pressure inventories.
        a_ratio = ua / max(0.5 * (ud + ue), 1e-3)
        fa = 1.3 * a_ratio / (0.3 + a_ratio)
        conv = min(0.85 * (1 + d[D_KIN]) * math.exp(0.004 * (tr - 120.0)), 0.98)
        rg, rh = conv * fa * ud, conv * fa * ue
        t_cw_in = 35.0 + d[D_CW_IN]
        fcw += (100 * v_cw_pos / 100 * (1 + d[D_CW_SUPPLY]) - fcw) / 3.0
        ncw = max(fcw / 100, 0.0)
        h_cool = 0.5 * ncw * (tr - t_cw_in)
        tr += (10.0 * (rg + 1.2 * rh) - h_cool - 0.02 * (tr - 25.0)) / 8.0
        e = tr + nz[ix["reactor_temp"]] - s[4]
        v_cw = _pi(v_cw, 3.0, 12.0, e, e_tr)
        e_tr = e
        if abs(v_cw - v_cw_pos) > dbl[t]:
            v_cw_pos = v_cw
        l_in = rg + rh + 0.5 * (1 - conv) * (ud + ue)
        f_eff = 3.5 * v_eff / 100 * (1 + 3e-4 * (pr - 2700.0))
        lr += (l_in - f_eff) * 1.5
        e = lr + nz[ix["reactor_level"]] - s[6]
        v_eff = _pi(v_eff, 2.0, 30.0, e, e_lr)
        e_lr = e
        gas = 0.2 * ua + 0.5 * uc + 0.1 * (1 - conv) * (ud + ue) + 0.025 * (ud + ue)
        f_purge = 3.0 * v_purge / 100 * math.sqrt(max(pr, 0.0) / 2700.0)
        pr += 40.0 * (gas - f_purge)
        e = pr + nz[ix["reactor_pressure"]] - s[5]
        v_purge = _pi(v_purge, 0.3, 10.0, e, e_pr)
        e_pr = e
        # Separator: the condenser sets the split of the effluent into liquid (level) and vapour (recycle).
        t_cond_in = 30.0 + d[5]
        fcond += (v_cond - fcond) / 3.0
        ncond = max(fcond / 100, 0.0)
        h_out = 0.15 * ncond * (ts - t_cond_in)
        ts += (0.05 * f_eff * (tr - ts) - h_out) / 3.0
        e = ts + nz[ix["separator_temp"]] - s[7]
        v_cond = _pi(v_cond, 3.0, 10.0, e, e_ts)
        e_ts = e
        phi = min(max(0.55 + 0.01 * (80.0 - ts), 0.2), 0.9)
        f_sep = 2.5 * v_sep / 100
        ls += (phi * f_eff - f_sep) * 2.0
        e = ls + nz[ix["separator_level"]] - s[8]
        v_sep = _pi(v_sep, 2.0, 30.0, e, e_ls)
        e_ls = e
        # Compressor: the anti-surge valve recirculates when the vapour alone is below the minimum flow.
        r_vap = (1 - phi) * f_eff + 0.3 * gas
        q_c = r_vap + v_as / 100
        e = 100 * (s[11] - (q_c + nz[ix["compressor_flow"]] / 25.0))
        v_as, i_as = _pi_clamped(i_as, 0.5, 4.0, e)
        # Stripper: steam heats the liquid, strips lights overhead; the product valve holds its level.
        fst += (1000.0 * v_steam / 100 * (1 + d[8]) - fst) / 2.0
        nst = max(fst / 1000.0, 0.0)
        tst += (4.0 * nst - 0.08 * f_sep * (tst - ts) - 0.01 * (tst - 25.0)) / 4.0
        e = s[10] - (tst + nz[ix["stripper_temp"]] + bl[t])
        v_steam = _pi(v_steam, 4.0, 15.0, e, e_tst)
        e_tst = e
        strip = min(max(0.05 + 0.002 * (tst - 95.0), 0.0), 0.5)
        f_prod = 2.0 * v_prod / 100
        lst += (f_sep * (1 - strip) - f_prod) * 2.0
        e = lst + nz[ix["stripper_level"]] - s[9]
        v_prod = _pi(v_prod, 2.0, 30.0, e, e_lst)
        e_lst = e
        # Analysers (true values, lagged by the holdups they sample).
        x_g += (100 * rg / max(rg + rh, 1e-6) - x_g) / 20.0
        imp += (2.0 * math.exp(-0.08 * (tst - 95.0)) * (1 + 2.0 * (0.85 - conv)) - imp) / 10.0
        y_a += (100 * 0.2 * ua / max(gas, 1e-6) - y_a) / 5.0
        y_c += (100 * 0.5 * uc / max(gas, 1e-6) - y_c) / 5.0
        rows.append(
            (
                flow[0],
                flow[1],
                flow[2],
                flow[3],
                fv[0],
                fv[1],
                fv[2],
                fv[3],
                flow[0] + flow[3] + 25.0 * r_vap,
                pr,
                lr,
                tr,
                v_cw_pos,
                fcw,
                t_cw_in,
                t_cw_in + 0.25 * h_cool / max(ncw, 0.02),
                v_purge,
                0.4 * f_purge,
                v_eff,
                20.0 * f_eff,
                ts,
                ls,
                pr - 30.0 - 8.0 * f_eff**2,
                v_cond,
                fcond,
                t_cond_in,
                t_cond_in + 2.0 * h_out / max(ncond, 0.02),
                v_sep,
                20.0 * f_sep,
                25.0 * q_c,
                25.0 * r_vap,
                v_as,
                280.0 * q_c * (1 + 0.01 * (30.0 + 8.0 * f_eff**2)),
                ts + 30.0 + 8.0 * q_c,
                lst,
                tst,
                300.0 + 40.0 * nst + 20.0 * f_sep,
                v_steam,
                fst,
                v_prod,
                20.0 * f_prod,
                20.0 * strip * f_sep,
                x_g,
                imp,
                y_a,
                y_c,
            )
        )
    return np.array(rows)
