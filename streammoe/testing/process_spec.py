"""The process simulator's tables: channels, their noise, the operating modes, disturbances and fault kinds.

Kept apart from the plant equations (process.py) so that the specification in docs/process-simulator.md can be
checked against one place. Values are engineering units: kscmh (gas flows), kg/h, m3/h, kPa, degC, %, kW.
"""

from __future__ import annotations

import math
from dataclasses import astuple, dataclass

# (name, measurement noise std). Valve positions are the positioners' feedback: no noise of their own.
_CHANNELS: tuple[tuple[str, float], ...] = (
    ("feed_a_flow", 0.002),
    ("feed_d_flow", 6.0),
    ("feed_e_flow", 6.0),
    ("feed_c_flow", 0.01),
    ("feed_a_valve", 0.0),
    ("feed_d_valve", 0.0),
    ("feed_e_valve", 0.0),
    ("feed_c_valve", 0.0),
    ("reactor_feed_flow", 0.1),
    ("reactor_pressure", 1.5),
    ("reactor_level", 0.3),
    ("reactor_temp", 0.05),
    ("reactor_cw_valve", 0.0),
    ("reactor_cw_flow", 0.3),
    ("reactor_cw_inlet_temp", 0.05),
    ("reactor_cw_outlet_temp", 0.08),
    ("purge_valve", 0.0),
    ("purge_flow", 0.005),
    ("reactor_outlet_valve", 0.0),
    ("reactor_outlet_flow", 0.1),
    ("separator_temp", 0.05),
    ("separator_level", 0.3),
    ("separator_pressure", 1.5),
    ("condenser_cw_valve", 0.0),
    ("condenser_cw_flow", 0.3),
    ("condenser_cw_inlet_temp", 0.05),
    ("condenser_cw_outlet_temp", 0.08),
    ("separator_underflow_valve", 0.0),
    ("separator_underflow", 0.08),
    ("compressor_flow", 0.1),
    ("recycle_flow", 0.1),
    ("antisurge_valve", 0.0),
    ("compressor_power", 1.0),
    ("compressor_outlet_temp", 0.1),
    ("stripper_level", 0.3),
    ("stripper_temp", 0.05),
    ("stripper_pressure", 0.8),
    ("steam_valve", 0.0),
    ("steam_flow", 3.0),
    ("product_valve", 0.0),
    ("product_flow", 0.08),
    ("stripper_overhead_flow", 0.01),
    ("product_g_pct", 0.2),
    ("product_impurity_pct", 0.02),
    ("purge_a_pct", 0.2),
    ("purge_c_pct", 0.3),
)
CHANNELS: tuple[str, ...] = tuple(n for n, _ in _CHANNELS)
NOISE: tuple[float, ...] = tuple(s for _, s in _CHANNELS)

# Feed flow transmitters report exactly 0 below 1 % of their span (a low-flow cut-off).
CUTOFF = {"feed_a_flow": 0.012, "feed_d_flow": 90.0, "feed_e_flow": 90.0, "feed_c_flow": 0.06}
ANALYSER_PERIOD = 6  # the four analysers report a new value every 6 records and hold it in between


def _phi(tau: float) -> float:
    return math.exp(-1.0 / tau)


# AR(1) disturbances: (name, stationary std, correlation time in records).
_DISTURBANCES = (
    ("feed_a_supply", 0.02, 60),
    ("feed_d_supply", 0.02, 60),
    ("feed_e_supply", 0.02, 60),
    ("feed_c_supply", 0.02, 60),
    ("cw_inlet_temp", 0.5, 200),
    ("condenser_inlet_temp", 0.5, 200),
    ("kinetics", 0.01, 300),
    ("feed_a_purity", 0.005, 20),
    ("steam_header", 0.02, 80),
    ("cw_supply", 0.02, 60),
)
DISTURBANCES = tuple(n for n, _, _ in _DISTURBANCES)
DIST_SIGMA = tuple(s for _, s, _ in _DISTURBANCES)
DIST_PHI = tuple(_phi(t) for _, _, t in _DISTURBANCES)

# Valves parked at exactly 0 % in a mode (and moving in every mode not listed for them): a feed whose setpoint
# is 0 is in manual; the anti-surge valve shuts where the vapour alone exceeds the minimum compressor flow.
PARKED: dict[int, tuple[str, ...]] = {
    2: ("antisurge_valve",),
    3: ("feed_e_valve", "feed_c_valve", "antisurge_valve"),
    4: ("feed_d_valve",),
}

FAULT_KINDS = ("step", "drift", "variation", "sticking", "bias", "oscillation")


@dataclass(frozen=True)
class Mode:
    """An operating mode: its setpoints. A feed setpoint of 0 puts that feed's valve in manual at 0 %."""

    name: str
    feed_a: float  # kscmh
    feed_d: float  # kg/h
    feed_e: float  # kg/h
    feed_c: float  # kscmh
    reactor_temp: float
    reactor_pressure: float
    reactor_level: float
    separator_temp: float
    separator_level: float
    stripper_level: float
    stripper_temp: float
    min_compressor_flow: float  # anti-surge minimum, normalised compressor flow (25 kscmh = 1)

    def setpoints(self) -> tuple[float, ...]:
        return astuple(self)[1:]


MODES: tuple[Mode, ...] = (
    Mode("base-50/50", 0.50, 3600, 3600, 2.0, 120.0, 2700, 65, 80.0, 50, 50, 95.0, 1.25),
    Mode("g-rich-90/10", 0.50, 6300, 900, 1.5, 118.0, 2750, 70, 78.0, 55, 45, 96.0, 1.25),
    Mode("h-rich-10/90", 0.52, 900, 6300, 2.5, 123.0, 2650, 60, 82.0, 45, 55, 94.0, 0.95),
    Mode("g-only-max", 0.62, 8000, 0, 0.0, 121.0, 2800, 75, 79.0, 50, 50, 97.0, 0.85),
    Mode("h-only", 0.45, 0, 6800, 3.0, 124.0, 2680, 62, 83.0, 50, 52, 93.0, 1.30),
    Mode("turndown-60", 0.30, 2200, 2200, 3.5, 116.0, 2600, 55, 76.0, 45, 45, 92.0, 1.10),
)
