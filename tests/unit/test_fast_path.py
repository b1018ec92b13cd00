"""The model-side fast path: autocast precision changes no decision that matters, and is refused where unsupported."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streammoe.model.config import ModelConfig
from streammoe.model.detector import MixtureDetector
from streammoe.testing.machine import Machine

C = 12


MACHINE = Machine(C, modes=3, factors=0, spread=5.0, noise=1.0, shape_seed=0)  # three modes of white noise


def rows(n: int, seed: int) -> np.ndarray:
    return MACHINE.rows(seed, n)


@pytest.fixture(scope="module")
def fitted() -> MixtureDetector:
    det = MixtureDetector(C, ModelConfig(k_max=4, hidden=32, latent=4, fit_steps=300, n_samples=4), device="cpu")
    det.fit(rows(4000, seed=1), k=3)
    return det


def decisions(det: MixtureDetector, x: np.ndarray, precision: str) -> tuple[np.ndarray, np.ndarray]:
    det.accelerate(precision=precision)
    det.generator.manual_seed(11)
    try:
        s = det.score_many(x)
    finally:
        det.accelerate()
    return s.is_anomaly, s.log_p_value


@pytest.mark.skipif(not hasattr(torch, "bfloat16"), reason="no bfloat16")
def test_bfloat16_autocast_keeps_the_decisions(fitted) -> None:
    x = rows(3000, seed=2)
    x[::100, 3] += 30.0  # 30 planted anomalies, far off every mode
    planted = np.zeros(len(x), bool)
    planted[::100] = True
    f32, lp32 = decisions(fitted, x, "float32")
    bf16, lp16 = decisions(fitted, x, "bfloat16")
    assert f32[planted].all() and bf16[planted].all()
    # Away from the threshold the decisions agree; a record may flip only where its p-value was borderline.
    flips = f32 != bf16
    assert flips.mean() <= 0.005
    assert (np.abs(lp32[flips] - np.log(fitted.config.threshold)) < 1.0).all()
    assert np.isfinite(lp16[~planted]).all()


def test_precision_is_checked(fitted) -> None:
    with pytest.raises(ValueError, match="float16 autocast needs a GPU"):
        fitted.accelerate(precision="float16")
    with pytest.raises(ValueError, match="precision must be one of"):
        fitted.accelerate(precision="int8")
    fitted.accelerate()
    assert fitted.model.autocast_dtype is None and not fitted.model.use_compiled
