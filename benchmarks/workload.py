"""The benchmarks' machine and model: synthetic rows of 16 operating modes, producing them onto a topic, and a
detector fitted on them (perf, e2e, soak, scale-out, cascade, gpu and learn_step all measure on these)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from streammoe.kafka.sink import produce as produce_message
from streammoe.testing.machine import Machine
from streammoe.testing.records import keyed_records

if TYPE_CHECKING:
    from streammoe.model.detector import MixtureDetector


N_MODES = 16
ANOMALY_SHIFT = 60.0  # added to one channel of an injected anomaly (the modes' spread is a few units)


def synthetic(n: int, modes: int, c: int, seed: int = 0) -> np.ndarray:
    """Rows of the benchmarks' machine: `modes` 3-factor operating modes in `c` channels, the same modes for every
    `seed` (the fit data and the stream come from one machine), the rows differ."""
    return Machine(c, modes, factors=3, spread=4.0, shape_seed=12345).rows(seed, n)


def produce(bootstrap: str, topic: str, rows: np.ndarray, channels: list[str]) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})
    for key, value in keyed_records(rows, channels):
        produce_message(p, topic, value, key)
    assert p.flush(60) == 0


def fitted(k: int, s: int, channels: list[str], fit_steps: int, device: str = "cpu") -> MixtureDetector:
    from streammoe.model.config import ModelConfig
    from streammoe.model.detector import MixtureDetector

    # Plain: every record on the full pass; the cascade column turns it on for its own runs.
    config = ModelConfig(k_max=k, n_samples=s, fit_steps=fit_steps, min_expert_weight=0.0, cascade={"enabled": False})
    detector = MixtureDetector(len(channels), config, channels, device=device)
    detector.fit(synthetic(20_000, N_MODES, len(channels), seed=1), k=k)
    return detector


def fitted_on_k_modes(k: int, s: int, channels: list[str], fit_steps: int = 300) -> MixtureDetector:
    """The model of the soak, the scale-out bench and the e2e bench: k experts fitted on a machine of k modes,
    every record on the full pass (their figures predate the cascade)."""
    from streammoe.model.config import ModelConfig
    from streammoe.model.detector import MixtureDetector

    config = ModelConfig(k_max=k, n_samples=s, fit_steps=fit_steps, cascade={"enabled": False})
    detector = MixtureDetector(len(channels), config, channels, device="cpu")
    detector.fit(synthetic(20_000, k, len(channels), seed=1), k=k)
    return detector
