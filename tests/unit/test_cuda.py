"""The model on a GPU: it scores as on the CPU, learns and grows experts without leaving the device, and its
checkpoints move between GPU and CPU workers. Skipped where torch sees no GPU (CI); run on a lent GPU machine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from modes_kit import NOVELTY, C, mode_a, mode_b, stream

from streammoe.model.config import ModelConfig
from streammoe.model.detector import MixtureDetector
from streammoe.state.persistence import load_detector, save_detector

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no GPU (torch.cuda.is_available())")


@pytest.fixture()
def cpu_detector() -> MixtureDetector:
    det = MixtureDetector(C, ModelConfig(k_max=4, fit_steps=400, novelty=NOVELTY), device="cpu")
    det.fit(mode_a(np.random.default_rng(0), 3000))
    return det


def on_device(det: MixtureDetector, device: str) -> list[str]:
    """Names of the model's tensors that are not on `device`."""
    state = {
        **det.model.state_dict(),
        **{
            f"adam.{i}.{k}": v
            for i, s in enumerate(det.learner.optimizer.state.values())
            for k, v in s.items()
            if k != "step"
        },
    }
    return [name for name, t in state.items() if t.device.type != device]


def test_a_cpu_model_moved_to_the_gpu_scores_as_it_did(cpu_detector, tmp_path) -> None:
    save_detector(cpu_detector, tmp_path / "m")
    gpu = load_detector(tmp_path / "m", device="cuda")
    assert on_device(gpu, "cuda") == []
    rng = np.random.default_rng(1)
    x = np.concatenate([mode_a(rng, 2000), mode_a(rng, 20) + 12.0])
    a, b = cpu_detector.score_many(x), gpu.score_many(x)
    # Different random streams on each device (the importance samples), the same model: near-equal scores.
    assert np.corrcoef(a.nll, b.nll)[0, 1] > 0.99
    assert (a.is_anomaly == b.is_anomaly).mean() > 0.99
    assert b.is_anomaly[-20:].all() and b.is_anomaly[:2000].mean() < 0.02


def test_on_the_gpu_a_new_mode_grows_one_expert_and_nothing_leaves_the_device(cpu_detector, tmp_path) -> None:
    save_detector(cpu_detector, tmp_path / "m")
    gpu = load_detector(tmp_path / "m", device="cuda")
    rng = np.random.default_rng(2)
    flags_a, events_a = stream(gpu, mode_a(rng, 2000))
    flags_b, events = stream(gpu, mode_b(rng, 4000))
    assert events_a == [] and flags_a.mean() < 0.02
    assert [e.kind for e in events].count("mode_added") == 1 and gpu.model.n_active == 2
    assert flags_b[1500:].mean() < 0.02
    assert on_device(gpu, "cuda") == []


def test_a_gpu_checkpoint_restores_on_a_cpu_worker_and_back(cpu_detector, tmp_path) -> None:
    save_detector(cpu_detector, tmp_path / "m")
    gpu = load_detector(tmp_path / "m", device="cuda")
    stream(gpu, mode_a(np.random.default_rng(3), 1024))
    save_detector(gpu, tmp_path / "g")
    cpu = load_detector(tmp_path / "g", device="cpu")
    assert on_device(cpu, "cpu") == []
    for p, q in zip(gpu.model.state_dict().values(), cpu.model.state_dict().values()):
        assert torch.equal(p.cpu(), q)
    x = mode_a(np.random.default_rng(4), 1024)
    cpu.learn_many(cpu.score_many(x))  # learning goes on where the GPU worker stopped
    save_detector(cpu, tmp_path / "c")
    again = load_detector(tmp_path / "c", device="cuda")
    assert on_device(again, "cuda") == []
    assert again.score_many(x).is_anomaly.mean() < 0.02


def test_a_65k_batch_at_k16_s8_runs_in_a_few_passes() -> None:
    det = MixtureDetector(38, ModelConfig(k_max=16, n_samples=8, fit_steps=50, min_expert_weight=0.0), device="cuda")
    rng = np.random.default_rng(5)
    centres = rng.normal(0, 6, (16, 38))
    x = (centres[rng.integers(0, 16, 80_000)] + rng.normal(0, 1, (80_000, 38))).astype(np.float32)
    det.fit(x[:20_000], k=16)
    assert det.model.n_active == 16
    assert det.model.chunk_rows() >= 8192, "a pass takes thousands of rows on a GPU, not the CPU's 64"
    scored = det.score_many(x[-65_536:])
    assert scored.nll.shape == (65_536,) and np.isfinite(scored.nll).all()
    assert scored.is_anomaly.mean() < 0.05
