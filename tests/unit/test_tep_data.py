"""benchmarks/tep_data.py without tep-studio: the two faults it adds itself, and clear refusals."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from benchmarks.tep_data import BIAS, BIAS_CHANNEL, OSC_AMPLITUDE, OSC_VALVE, FaultPlan, FaultyController, main


class Echo:
    """A controller that returns the measurements it was given as its first 12 actions."""

    setpoints = "sp"

    def reset(self, measurements, *, time: float = 0.0) -> None:
        self.was_reset = True

    def compute_action(self, measurements, *, time: float):
        self.seen = np.array(measurements)
        return np.full(12, 50.0), {"time": time}


def test_bias_is_seen_by_the_loop_from_the_fault_start_only():
    inner = Echo()
    ctl = FaultyController(inner, FaultPlan("bias", start_h=2.0))
    meas = np.zeros(41)
    ctl.compute_action(meas, time=1.0)
    assert inner.seen[BIAS_CHANNEL] == 0.0
    ctl.compute_action(meas, time=2.5)
    assert inner.seen[BIAS_CHANNEL] == BIAS and meas[BIAS_CHANNEL] == 0.0, "the caller's array is not changed"


def test_oscillation_moves_one_valve_within_its_travel():
    ctl = FaultyController(Echo(), FaultPlan("oscillation", start_h=0.0))
    actions = np.array([ctl.compute_action(np.zeros(41), time=t)[0] for t in np.linspace(0, 1, 41)])
    valve = actions[:, OSC_VALVE]
    assert valve.max() == pytest.approx(50 + OSC_AMPLITUDE, abs=0.1) and valve.min() == pytest.approx(
        50 - OSC_AMPLITUDE, abs=0.1
    )
    others = np.delete(actions, OSC_VALVE, axis=1)
    assert (others == 50.0).all()


def test_setpoints_and_reset_pass_through():
    inner = Echo()
    ctl = FaultyController(inner, FaultPlan())
    ctl.setpoints = "other"
    assert inner.setpoints == "other" and ctl.setpoints == "other"
    ctl.reset(np.zeros(41), time=0.0)
    assert inner.was_reset


def test_unknown_fault_kind_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="unknown fault kind"):
        main([str(tmp_path), "--faults", "leak"])


@pytest.mark.skipif(importlib.util.find_spec("tep_studio") is not None, reason="tep-studio is installed here")
def test_without_tep_studio_it_says_how_to_install_it(tmp_path):
    with pytest.raises(SystemExit, match=r"pip install -e '\.\[tep\]'"):
        main([str(tmp_path), "--modes", "1", "--faults", "", "--switches", "", "--records", "5"])
