"""The demo's pump: the kit's synthetic machine drives it, its physics turns that into sensors, faults are injected.

The operating modes are the kit's one machine (streammoe.testing.machine): each mode an operating point of the two
hidden drivers, shaft speed (rpm) and load (0..1), the speed varying by 1 % and the load by 0.03 around it. The
pump's physics maps the drivers to eight channels (pressure grows with the square of flow, current with torque,
temperature follows power slowly), so the channels are correlated in a mode-specific, non-linear way, as on a real
machine. Each record carries its ground truth (mode, fault) for checking, which the daemon never sees.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from streammoe.testing.machine import Machine

CHANNELS = ["speed", "flow", "pressure", "current", "voltage", "temperature", "vibration_x", "vibration_y"]

# Operating points: (speed rpm, load 0..1). "C" is never in the fitting data: the demo's new mode.
MODES = {"A": (1450.0, 0.45), "B": (2900.0, 0.70), "C": (2200.0, 0.25)}
DRIVERS = Machine(
    2,
    modes=len(MODES),
    factors=2,
    centres=np.array(list(MODES.values())),
    mixing=np.array([np.diag([0.01 * speed, 0.03]) for speed, _ in MODES.values()]),
    noise=0.0,
)
FAULTS = ("spike", "drift", "stuck", "vibration")


@dataclass(frozen=True)
class Phase:
    mode: str
    records: int
    fault: str | None = None  # injected over the whole phase


@dataclass(frozen=True)
class SimRecord:
    asset_id: str
    ts: int  # ms since the epoch
    values: dict[str, float]
    mode: str
    fault: str | None

    def as_json_obj(self) -> dict:
        return {"asset_id": self.asset_id, "ts": self.ts, "values": self.values}


def default_schedule(scale: int = 1) -> list[Phase]:
    """Known modes with switches, four kinds of faults, then a sustained mode never seen in training."""
    n = 400 * scale
    return [
        Phase("A", 3 * n),
        Phase("A", 1, "spike"),
        Phase("A", n),
        Phase("B", 3 * n),
        Phase("B", 60, "vibration"),
        Phase("B", n),
        Phase("A", 2 * n),
        Phase("A", 120, "drift"),
        Phase("A", n),
        Phase("B", 80, "stuck"),
        Phase("B", n),
        Phase("C", 6 * n),
        Phase("C", 1, "spike"),
        Phase("C", 2 * n),
    ]


class PumpSimulator:
    def __init__(
        self, seed: int = 0, asset_id: str = "pump-1", start_ms: int = 1_732_000_000_000, period_ms: int = 1000
    ):
        self.rng = np.random.default_rng(seed)
        self.asset_id, self.ts, self.period_ms = asset_id, start_ms, period_ms
        self.temperature = 40.0
        self.last: np.ndarray | None = None

    def _physics(self, speed: float, load: float) -> np.ndarray:
        r = self.rng
        load = float(np.clip(load, 0.05, 1.0))
        flow = 0.022 * speed * (1.1 - 0.5 * load) + 0.4 * r.standard_normal()
        pressure = 1.0 + 2.2e-3 * flow**2 * (0.5 + load) + 0.05 * r.standard_normal()
        current = 2.0 + 9e-3 * speed * load + 0.15 * r.standard_normal()
        voltage = 400.0 - 1.5 * current + 1.0 * r.standard_normal()
        target = 35.0 + 0.0045 * speed * load * 10
        self.temperature += 0.05 * (target - self.temperature) + 0.08 * r.standard_normal()
        vib = 0.002 * speed / 1000 * (1 + load)
        vx = vib * (1 + 0.08 * r.standard_normal())
        vy = vib * 0.8 * (1 + 0.08 * r.standard_normal())
        return np.array([speed, flow, pressure, current, voltage, self.temperature, vx, vy])

    def _inject(self, x: np.ndarray, fault: str, step: int) -> np.ndarray:
        x = x.copy()
        if fault == "spike":
            x[2] *= 2.5
        elif fault == "drift":
            x[5] += 0.12 * step
        elif fault == "stuck":
            x[1] = self.last[1] if self.last is not None else x[1]
            x[3] *= 0.55
        elif fault == "vibration":
            x[6] *= 6.0 * (1 + 0.3 * self.rng.standard_normal())
            x[7] *= 5.0 * (1 + 0.3 * self.rng.standard_normal())
        return x

    def run(self, schedule: list[Phase]) -> Iterator[SimRecord]:
        for phase in schedule:
            stuck_at = None
            mode = list(MODES).index(phase.mode)
            for step in range(phase.records):
                speed, load = DRIVERS.rows(self.rng, 1, mode)[0].tolist()  # one record at a time: one stream of draws
                x = self._physics(speed, load)
                if phase.fault is not None:
                    if phase.fault == "stuck":
                        stuck_at = stuck_at if stuck_at is not None else x.copy()
                        self.last = stuck_at
                    x = self._inject(x, phase.fault, step)
                self.ts += self.period_ms
                yield SimRecord(self.asset_id, self.ts, dict(zip(CHANNELS, map(float, x))), phase.mode, phase.fault)


def training_data(records_per_mode: int = 3000, seed: int = 1, modes: tuple[str, ...] = ("A", "B")) -> np.ndarray:
    """Normal records of the known modes, for fitting the demo's starting model."""
    sim = PumpSimulator(seed=seed)
    rows = [list(r.values.values()) for r in sim.run([Phase(m, records_per_mode) for m in modes])]
    return np.asarray(rows, dtype=np.float32)
