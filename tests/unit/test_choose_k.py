"""The number of experts is a measured choice: data from k well-separated modes gets k experts (+-1), and one
mode with correlated channels is not split into fragments (BIC split every data set tried into the maximum)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streammoe.model.config import ModelConfig
from streammoe.model.detector import MixtureDetector
from streammoe.model.fitting import choose_clusters, fit_capacity
from streammoe.model.scaler import RunningScaler

C = 10


def modes(n_modes: int, n: int, seed: int) -> np.ndarray:
    """`n_modes` modes, each a correlated (3 latent factors), skewed cloud at its own set of levels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (n_modes, C)) * 12
    loadings = rng.normal(0, 1, (n_modes, 3, C))
    which = rng.integers(0, n_modes, n)
    f = rng.normal(0, 1, (n, 3))
    x = centres[which] + np.einsum("nf,nfc->nc", f, loadings[which]) + rng.gamma(2.0, 0.3, (n, C))
    return x.astype(np.float32)


def scaled(x: np.ndarray) -> np.ndarray:
    s = RunningScaler(x.shape[1])
    s.update(torch.from_numpy(x))
    return s.transform(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("n_modes", [1, 3, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_k_well_separated_modes_get_k_clusters(n_modes: int, seed: int) -> None:
    _, k, ll = choose_clusters(scaled(modes(n_modes, 3000, seed)), fit_capacity(8), None, 0.02, seed)
    assert abs(k - n_modes) <= 1, (k, ll)
    assert len(ll) == fit_capacity(8) == 6, "every candidate K was measured"


def test_a_zero_tolerance_takes_the_best_held_out_k_which_overfits_one_mode() -> None:
    """Why the tolerance: the best held-out likelihood alone splits one correlated mode."""
    x = scaled(modes(1, 3000, 2))
    _, k0, ll = choose_clusters(x, 6, None, 0.02, 2, tolerance=0.0)
    _, k, _ = choose_clusters(x, 6, None, 0.02, 2)
    assert k <= 2 < k0, ll


def test_fit_on_three_modes_gets_three_experts() -> None:
    torch.manual_seed(0)
    det = MixtureDetector(C, ModelConfig(k_max=8, fit_steps=200, n_samples=2), device="cpu")
    report = det.fit(modes(3, 3000, 3))
    assert report.k_selected == det.model.n_active and abs(report.k_selected - 3) <= 1
    assert set(report.heldout_ll) == set(range(1, 7))
