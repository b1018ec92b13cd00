"""The kit's synthetic machine (streammoe.testing.machine), as the demo's pump uses it: modes placed and mixed by
hand, no sensor noise."""

from __future__ import annotations

import numpy as np

from streammoe.demo.sensors import DRIVERS, MODES
from streammoe.testing.machine import Machine


def test_a_machine_mixed_by_hand_moves_each_mode_as_its_mixing_says() -> None:
    centres = np.array([[10.0, 0.0, -5.0], [0.0, 100.0, 1.0]])
    mixing = np.array([[[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]], [[0.0, 3.0, 3.0], [0.0, 0.0, 0.0]]])
    machine = Machine(3, modes=2, factors=2, centres=centres, mixing=mixing, noise=0.0)
    rows = machine.rows(7, 4, mode=np.array([0, 1, 0, 1]))
    z = np.random.default_rng(7).normal(0, 1, (4, 2))  # a noiseless machine draws the factors and nothing else
    expected = centres[[0, 1, 0, 1]] + np.einsum("nf,nfc->nc", z, mixing[[0, 1, 0, 1]])
    np.testing.assert_allclose(rows, expected.astype(np.float32))
    assert rows[1, 0] == 0.0 and np.isclose(rows[1, 1] - 100.0, rows[1, 2] - 1.0, atol=1e-4)  # one factor, two channels


def test_the_pumps_drivers_vary_around_each_operating_point() -> None:
    for mode, (speed, load) in enumerate(MODES.values()):
        drivers = DRIVERS.rows(np.random.default_rng(mode), 20_000, mode).astype(np.float64)
        assert abs(drivers[:, 0].mean() / speed - 1) < 1e-3 and abs(drivers[:, 0].std() / speed - 0.01) < 5e-4
        assert abs(drivers[:, 1].mean() - load) < 1e-3 and abs(drivers[:, 1].std() - 0.03) < 1e-3
        assert abs(np.corrcoef(drivers.T)[0, 1]) < 0.05  # speed and load move independently
