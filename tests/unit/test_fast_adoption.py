"""A coherent switch to a far, settled state is adopted within a few hundred records at default settings; a long
fault near the known mode (a few channels moved, as SKAB's valve faults move at most 2 of 8) is not."""

from __future__ import annotations

import numpy as np
import torch
from modes_kit import stream

from streammoe.model.config import ModelConfig
from streammoe.model.detector import MixtureDetector

C = 10


def plant(rng: np.random.Generator, n: int, level: np.ndarray) -> np.ndarray:
    """Channels driven by two slow common disturbances plus noise around the mode's setpoints `level`."""
    slow = np.cumsum(rng.normal(0, 0.05, (n, 2)), axis=0) * 0.2
    mix = np.linspace(0.2, 1.0, C)
    x = level + slow[:, :1] * mix + slow[:, 1:] * mix[::-1] + rng.normal(0, 1, (n, C))
    return x.astype(np.float32)


A = np.zeros(C)
B = A.copy()
B[:6] = [300.0, -250.0, 120.0, 60.0, 45.0, -80.0]  # six setpoints moved by tens to hundreds of spreads


def fitted() -> MixtureDetector:
    torch.manual_seed(0)
    det = MixtureDetector(C, ModelConfig(fit_steps=400, n_samples=4))
    det.fit(plant(np.random.default_rng(0), 2400, A))
    return det


def test_a_far_settled_switch_is_adopted_within_300_records_and_stops_alerting() -> None:
    det = fitted()
    rng = np.random.default_rng(1)
    x = np.concatenate([plant(rng, 1000, A), plant(rng, 2000, B)])
    b = x[1000:].copy()
    b[:, 6] = 0.0  # a valve parked at its stop in mode B: exactly constant
    x[1000:] = b
    flags, events = stream(det, x, batch=64)
    added = [e for e in events if e.kind == "mode_added"]
    assert len(added) == 1, events
    at = added[0].last_ref - 10_000 + 1
    assert at - 1000 <= 300, f"adopted {at - 1000} records after the switch"
    assert flags[at + 200 :].mean() < 0.02
    assert flags[:1000].mean() < 0.05


def test_a_long_fault_on_two_channels_is_not_adopted_and_keeps_alerting() -> None:
    det = fitted()
    rng = np.random.default_rng(2)
    x = plant(rng, 2000, A)
    x[600:1000, :2] += np.array([40.0, -35.0], np.float32)  # 400 records, 2 channels far: a fault, not a mode
    flags, events = stream(det, x, batch=64)
    assert [e for e in events if e.kind == "mode_added"] == []
    assert flags[600:1000].mean() > 0.95
