"""Model directories load back bit-identically, and damaged or foreign ones are refused by name."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from streammoe.model.config import ModelConfig
from streammoe.model.detector import MixtureDetector
from streammoe.state.errors import ModelDamagedError, ModelLoadError
from streammoe.state.persistence import load_detector, save_detector


@pytest.fixture()
def detector() -> MixtureDetector:
    x = np.random.default_rng(0).normal(0, 1, (3000, 4)).astype(np.float32)
    det = MixtureDetector(4, ModelConfig(k_max=3, fit_steps=200), ["a", "b", "c", "d"])
    det.fit(x)
    return det


def test_reload_is_bit_identical_in_scoring_and_learning(detector, tmp_path) -> None:
    save_detector(detector, tmp_path / "m")
    twin = load_detector(tmp_path / "m")
    x = np.random.default_rng(1).normal(0, 1, (600, 4)).astype(np.float32)
    for det in (detector, twin):
        det.learn_many(det.score_many(x[:300]))
    a, b = detector.score_many(x[300:]), twin.score_many(x[300:])
    np.testing.assert_array_equal(a.nll, b.nll)
    np.testing.assert_array_equal(a.log_p_value, b.log_p_value)
    for p, q in zip(detector.model.experts.parameters(), twin.model.experts.parameters()):
        assert torch.equal(p, q)


def test_wrong_format_version_is_refused(detector, tmp_path) -> None:
    save_detector(detector, tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "meta.json").read_text())
    meta["format_version"] = 999
    (tmp_path / "m" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="format 999"):
        load_detector(tmp_path / "m")


def test_truncated_weights_are_refused(detector, tmp_path) -> None:
    save_detector(detector, tmp_path / "m")
    f = tmp_path / "m" / "experts.pt"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(ModelDamagedError, match="experts.pt does not match its checksum"):
        load_detector(tmp_path / "m")
    # A directory saved before checksums existed: torch's own error, named.
    meta = json.loads((tmp_path / "m" / "meta.json").read_text())
    del meta["sha256"]
    (tmp_path / "m" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelDamagedError, match="could not be loaded"):
        load_detector(tmp_path / "m")


def test_a_model_saved_on_another_kind_of_device_loads_with_a_reseeded_sampler(detector, tmp_path) -> None:
    """A GPU worker's sampler state (a CUDA generator's 16 bytes) does not fit a CPU generator: the model must
    still load on a CPU worker, every such load drawing the same samples, instead of being refused."""
    save_detector(detector, tmp_path / "m")
    rng = tmp_path / "m" / "rng.pt"
    torch.save({"generator": torch.arange(16, dtype=torch.uint8)}, rng)
    meta = json.loads((tmp_path / "m" / "meta.json").read_text())
    meta["sha256"]["rng.pt"] = hashlib.sha256(rng.read_bytes()).hexdigest()  # as the GPU worker wrote it
    (tmp_path / "m" / "meta.json").write_text(json.dumps(meta))
    a, b = load_detector(tmp_path / "m"), load_detector(tmp_path / "m")
    x = np.random.default_rng(2).normal(0, 1, (300, 4)).astype(np.float32)
    np.testing.assert_array_equal(a.score_many(x).nll, b.score_many(x).nll)
    for p, q in zip(detector.model.experts.parameters(), a.model.experts.parameters()):
        assert torch.equal(p, q)
    assert a.learn_many(a.score_many(x)).learned > 250


def test_adam_saved_unfused_by_an_older_version_loads_fused_and_goes_on_learning(detector, tmp_path) -> None:
    for group in detector.learner.optimizer.param_groups:
        group["fused"] = None  # as versions before the fused learning step saved it
    save_detector(detector, tmp_path / "m")
    twin = load_detector(tmp_path / "m")
    assert [g["fused"] for g in twin.learner.optimizer.param_groups] == [True]
    before = [p.detach().clone() for p in twin.model.experts.parameters()]
    x = np.random.default_rng(3).normal(0, 1, (300, 4)).astype(np.float32)
    assert twin.learn_many(twin.score_many(x)).stepped
    assert not all(torch.equal(p, q) for p, q in zip(before, twin.model.experts.parameters()))


def test_other_channel_set_is_refused(detector, tmp_path) -> None:
    save_detector(detector, tmp_path / "m")
    with pytest.raises(ModelLoadError, match="fitted on channels"):
        load_detector(tmp_path / "m", channels=["a", "b", "c", "x"])


def test_failed_save_leaves_the_previous_model_in_place(detector, tmp_path, monkeypatch) -> None:
    save_detector(detector, tmp_path / "m")
    before = load_detector(tmp_path / "m").score_many(np.zeros((5, 4), np.float32)).nll
    calls = {"n": 0}
    real_save = torch.save

    def failing_save(obj, f, *a, **kw):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", failing_save)
    detector.learn_many(detector.score_many(np.ones((50, 4), np.float32)))
    with pytest.raises(OSError, match="disk full"):
        save_detector(detector, tmp_path / "m")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["m"], "no temporary directory is left behind"
    after = load_detector(tmp_path / "m").score_many(np.zeros((5, 4), np.float32)).nll
    np.testing.assert_array_equal(before, after)
