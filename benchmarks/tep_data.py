"""Multi-mode Tennessee Eastman data from tep-studio (the `tep` extra) as series files for T4A/T4B.

    pip install -e '.[tep]'            # compiles tep-studio's C extension (needs gcc)
    python -m benchmarks.tep_data OUT [--modes 1,2,4,5] [--records 2400] [--faults step,drift,...]
    streammoe bench --tracks T4A,T4B --t4-data OUT --t4-pairs 1->2

tep-studio runs the modified TEP under Ricker's decentralised PI control; its modes 1-6 are its operating
points (G/H mix x production rate). One record is one 3-minute sample of the 41 measurements and the 12
valve positions. Each run first settles (`--settle-hours`) so modes steered from the base case start at their
operating point. The six fault kinds of the process simulator's protocol map onto TEP as follows: step IDV(4)
(reactor cooling water inlet temperature), drift IDV(13) (kinetics), variation IDV(8) (A/B/C feed composition),
sticking IDV(14) (reactor cooling water valve); TEP has no sensor bias or oscillating actuator, so bias adds
1 degC to the reactor temperature transmitter (the loop sees it) and oscillation adds a +-5 % sine with a
one-hour period to the reactor cooling water valve. Output is never committed: it is generated data.

Cost: about 1.5 s of CPU per simulated hour (20 records), so a 2,400-record run takes minutes.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streammoe.testing.process import Run
from streammoe.testing.process_files import write_series

SAMPLE_H = 0.05  # 3 minutes
CONTROL_H = 0.0005  # tep-studio's control interval
IDV = {"step": "idv_04", "drift": "idv_13", "variation": "idv_08", "sticking": "idv_14"}
FAULTS = ("step", "drift", "variation", "sticking", "bias", "oscillation")
BIAS_CHANNEL, BIAS = 8, 1.0  # reactor_temperature, degC
OSC_VALVE, OSC_AMPLITUDE, OSC_PERIOD_H = 9, 5.0, 1.0  # reactor_cooling_water_valve


def _tep(module: str = "tep_studio") -> Any:
    """tep-studio, imported by name: an optional extra, so neither the tests nor mypy need it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise SystemExit("tep_data needs tep-studio: pip install -e '.[tep]' (it compiles a C extension)") from None


@dataclass
class FaultPlan:
    kind: str | None = None
    start_h: float = math.inf


class FaultyController:
    """Ricker's controller, with the two faults TEP has no IDV for: a biased transmitter it reads, and an
    oscillation added to one valve command."""

    def __init__(self, inner: Any, plan: FaultPlan) -> None:
        self.inner, self.plan = inner, plan

    @property
    def setpoints(self) -> Any:
        return self.inner.setpoints

    @setpoints.setter
    def setpoints(self, value: Any) -> None:
        self.inner.setpoints = value

    def reset(self, measurements: Any, *, time: float = 0.0) -> None:
        self.inner.reset(measurements, time=time)

    def compute_action(self, measurements: Any, *, time: float) -> tuple[Any, Any]:
        on = time >= self.plan.start_h
        if on and self.plan.kind == "bias":
            measurements = np.array(measurements, dtype=np.float64)
            measurements[BIAS_CHANNEL] += BIAS
        action, diag = self.inner.compute_action(measurements, time=time)
        if on and self.plan.kind == "oscillation":
            action = np.array(action, dtype=np.float64)
            phase = 2 * math.pi * (time - self.plan.start_h) / OSC_PERIOD_H
            action[OSC_VALVE] = min(max(action[OSC_VALVE] + OSC_AMPLITUDE * math.sin(phase), 0.0), 100.0)
        return action, diag


def simulate_tep(
    mode: int,
    records: int,
    seed: int,
    settle_h: float,
    fault: str | None = None,
    fault_start: int = 0,
    switch_to: int | None = None,
    switch_at: int = 0,
) -> Run:
    """One run: `records` samples after settling in `mode`, with a fault or a switch of setpoints to `switch_to`."""
    tep = _tep()
    mode_setpoints = _tep("tep_studio.simulation.modes").mode_setpoints

    plan = FaultPlan(fault, settle_h + fault_start * SAMPLE_H if fault else math.inf)
    sp_a = mode_setpoints(f"mode{mode}")
    sp_b = mode_setpoints(f"mode{switch_to}") if switch_to is not None else sp_a
    t_switch = settle_h + switch_at * SAMPLE_H if switch_to is not None else math.inf
    idv_index = [d[0] for d in tep.list_disturbances()].index(IDV[fault]) if fault in IDV else None

    def disturbances(t: float) -> np.ndarray:
        vec = np.zeros(28)
        if idv_index is not None and t >= plan.start_h:
            vec[idv_index] = 1.0
        return vec

    schedule: Callable[[float], Any] = lambda t: sp_b if t >= t_switch else sp_a
    controller = FaultyController(tep.RickerMultiLoopController(), plan)
    horizon = settle_h + (records + 1) * SAMPLE_H
    result = tep.ClosedLoopSimulation(controller=controller, control_interval=CONTROL_H, horizon=horizon).run(
        seed=float(seed + 1),
        mode=f"mode{mode}",
        disturbance_schedule=disturbances,
        setpoint_schedule=schedule,
        record_every=round(SAMPLE_H / CONTROL_H),
    )
    if result.terminated:
        raise RuntimeError(f"mode {mode} ({fault or 'normal'}): the plant shut down at {result.final_time:.1f} h")
    rows = [r for r in result.results if r.time > settle_h + 1e-9][:records]
    values = np.array([np.concatenate([r.measurements, r.implemented_action]) for r in rows])
    if fault == "bias":
        values[fault_start:, BIAS_CHANNEL] += BIAS  # the transmitter's reading, as recorded
    labels = np.zeros(len(values), np.int8)
    if fault:
        labels[fault_start:] = 1
    names = tuple([m[0] for m in tep.list_measurements()] + [v[0] for v in tep.list_manipulated_variables()])
    return Run(values, labels, np.full(len(values), mode, np.int16), names, seed)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--modes", default="1,2,4,5", help="tep-studio modes 1-6 (3 and 6 start at their bundled state)")
    p.add_argument("--faults", default=",".join(FAULTS))
    p.add_argument("--records", type=int, default=2400, help="records per normal run (train and test)")
    p.add_argument("--fault-records", type=int, default=1800)
    p.add_argument("--fault-start", type=int, default=600)
    p.add_argument("--switches", default="1->2", help="fitted->unseen mode pairs to write as switch runs")
    p.add_argument("--settle-hours", type=float, default=24.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    modes = [int(m) for m in args.modes.split(",")]
    faults = [f for f in args.faults.split(",") if f]
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        raise SystemExit(f"unknown fault kind(s) {unknown}; known: {FAULTS}")
    files: dict[str, dict] = {}

    def put(name: str, run: Run, entry: dict) -> None:
        write_series(args.out / f"{name}.csv.gz", run)
        files[f"{name}.csv.gz"] = entry
        print(f"tep_data: {name} ({len(run.values)} records)", file=sys.stderr, flush=True)

    for m in modes:
        base = args.seed * 1000 + m * 100
        for part, seed in (("train", base), ("test", base + 1)):
            put(
                f"tep-mode{m}.{part}",
                simulate_tep(m, args.records, seed, args.settle_hours),
                {"mode": m, "mode_name": f"tep-mode{m}", "part": part, "fault": None, "seed": seed},
            )
        for j, kind in enumerate(faults):
            seed = base + 10 + j
            run = simulate_tep(m, args.fault_records, seed, args.settle_hours, kind, args.fault_start)
            put(
                f"tep-mode{m}.fault-{kind}",
                run,
                {
                    "mode": m,
                    "mode_name": f"tep-mode{m}",
                    "part": "fault",
                    "fault": kind,
                    "fault_start": args.fault_start,
                    "seed": seed,
                },
            )
    for pair in [s for s in args.switches.split(",") if s]:
        a, b = (int(v) for v in pair.split("->"))
        seed = args.seed * 1000 + 900 + a * 10 + b
        run = simulate_tep(a, 2 * args.records, seed, args.settle_hours, switch_to=b, switch_at=args.records)
        put(
            f"tep-switch{a}-{b}",
            run,
            {
                "part": "switch",
                "switch": [a, b],
                "switch_at": args.records,
                "seed": seed,
                "mode_names": [f"tep-mode{a}", f"tep-mode{b}"],
            },
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "manifest.json").write_text(json.dumps({"simulator": "tep-studio", "files": files}, indent=2))
    print(args.out / "manifest.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
