"""save_detector / load_detector: a reload continues bit-identically; damaged or foreign models are refused."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from streammoe.model.config import ModelConfig
from streammoe.model.detector import MixtureDetector
from streammoe.state import persistence
from streammoe.state.errors import ModelLoadError
from streammoe.state.persistence import load_detector, save_detector

CHANNELS = ["flow", "pressure", "temp", "vibration"]


def data(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mode = rng.random(n) < 0.6
    return (np.where(mode[:, None], [0.0, 5.0, 20.0, 1.0], [8.0, 5.0, 35.0, 3.0]) + rng.normal(0, 1, (n, 4))).astype(
        np.float32
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> str:
    det = MixtureDetector(4, ModelConfig(k_max=4, hidden=16, latent=3, fit_steps=300), CHANNELS, device="cpu")
    det.fit(data(2500, 0))
    det.learn_many(det.score_many(data(300, 1)))  # optimizer state and counters past the fit
    path = tmp_path_factory.mktemp("models") / "base"
    save_detector(det, path)
    return str(path)


def fresh(saved: str, tmp_path, name: str = "m") -> MixtureDetector:
    """An independent detector: the saved base model, loaded anew."""
    shutil.copytree(saved, tmp_path / name)
    return load_detector(tmp_path / name)


def assert_same_scores(a, b) -> None:
    for field in (
        "nll",
        "log_p_value",
        "is_anomaly",
        "mode",
        "responsibilities",
        "channel_share",
        "epistemic",
        "aleatoric",
    ):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def test_reload_scores_and_learns_bit_identically(saved, tmp_path) -> None:
    det = fresh(saved, tmp_path, "a")
    save_detector(det, tmp_path / "copy")
    twin = load_detector(tmp_path / "copy", channels=CHANNELS)
    assert twin.counters == det.counters
    batches = [data(256, s) for s in (5, 6, 7)]
    batches[1][:10] += 30.0  # some flagged records in the middle batch
    for x in batches:
        a, b = det.score_many(x), twin.score_many(x)
        assert_same_scores(a, b)
        det.learn_many(a)
        twin.learn_many(b)
    for p, q in zip(det.model.state_dict().values(), twin.model.state_dict().values()):
        assert torch.equal(p, q)
    sa, sb = det.learner.optimizer.state_dict()["state"], twin.learner.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
    assert torch.equal(det.generator.get_state(), twin.generator.get_state())
    assert_same_scores(det.score_many(batches[0]), twin.score_many(batches[0]))


def test_wrong_format_version_is_refused_by_name(saved, tmp_path) -> None:
    shutil.copytree(saved, tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "meta.json").read_text())
    meta["format_version"] = 7
    (tmp_path / "m" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match=r"format 7.*reads formats 1, 2, 3, 4, 5: refit it with `streammoe fit`"):
        load_detector(tmp_path / "m")


def test_a_format_1_model_loads_migrated_and_scores_as_it_did(tmp_path) -> None:
    """tests/data/model-v1 was saved by the format-1 code (one global scaler, scaled replay and memory; see
    the recipe in tests/data/README.md). Migrated, each expert computes what it computed: the same
    modes and p-values on a probe, the NLL shifted by the log-Jacobian the format-2 likelihoods include."""
    from pathlib import Path

    data = Path(__file__).resolve().parent.parent / "data"
    shutil.copytree(data / "model-v1", tmp_path / "m")
    probe = np.load(data / "model-v1-probe.npz")
    det = load_detector(tmp_path / "m", device="cpu", channels=["flow", "pressure", "temp"])
    m = det.model
    assert torch.equal(m.experts.loc[0], m.scaler.mean.float()) and torch.allclose(
        m.experts.scale[1], m.scaler.std.float()
    )
    assert float(m.replay.records[m.active][:, :16].abs().max()) > 10, "replay holds raw records (temp ~20-35)"
    scored = det.score_many(probe["x"])
    shift = float(torch.log(m.scaler.std).sum())
    np.testing.assert_array_equal(scored.mode, probe["mode"])
    np.testing.assert_allclose(scored.nll, probe["nll"] + shift, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(scored.log_p_value, probe["log_p"], rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(scored.is_anomaly, probe["is_anomaly"])
    det.learn_many(scored)
    save_detector(det, tmp_path / "again")
    assert (
        json.loads((tmp_path / "again" / "meta.json").read_text())["format_version"] == persistence.FORMAT_VERSION == 5
    )


def test_a_model_saved_before_sparse_steps_and_the_cascade_keeps_them_off_whatever_the_defaults(saved) -> None:
    """tests/data/model-v2's config.json has neither `learn_min_resp` nor `cascade` (saved by the format-2 code):
    it was made with dense steps and the full pass, and loads so; a save writes both, so a later model keeps its own
    values when the defaults change."""
    from pathlib import Path

    v2 = Path(__file__).resolve().parent.parent / "data" / "model-v2"
    assert not {"learn_min_resp", "cascade", "learn_min_rows"} & set(json.loads((v2 / "config.json").read_text()))
    old = load_detector(v2, device="cpu", channels=["flow", "pressure", "temp"]).config
    assert (old.learn_min_resp, old.cascade.enabled, old.learn_min_rows) == (0.0, False, 1)
    # tests/data/model-v3 was saved while the cascade's default was off: `enabled: false` is written in it, and
    # it keeps the full pass now that the default is on; a new fit gets the default.
    v3 = v2.parent / "model-v3"
    assert json.loads((v3 / "config.json").read_text())["cascade"]["enabled"] is False
    assert load_detector(v3, device="cpu", channels=["flow", "pressure", "temp"]).config.cascade.enabled is False
    assert ModelConfig().cascade.enabled is True
    written = json.loads((Path(saved) / "config.json").read_text())
    assert (written["learn_min_resp"], written["cascade"]["enabled"], written["learn_min_rows"]) == (
        ModelConfig().learn_min_resp,
        ModelConfig().cascade.enabled,
        ModelConfig().learn_min_rows,
    )


@pytest.mark.parametrize("keep", [0, 100, "half"])
def test_truncated_experts_file_is_refused(saved, tmp_path, keep) -> None:
    shutil.copytree(saved, tmp_path / "m")
    f = tmp_path / "m" / "experts.pt"
    raw = f.read_bytes()
    f.write_bytes(raw[: len(raw) // 2 if keep == "half" else keep])
    with pytest.raises(ModelLoadError) as err:
        load_detector(tmp_path / "m")
    assert str(tmp_path / "m") in str(err.value) and "could not be loaded" in str(err.value)


def test_missing_or_garbled_meta_is_refused(saved, tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="not a streammoe model directory"):
        load_detector(tmp_path / "nothing-here")
    shutil.copytree(saved, tmp_path / "m")
    (tmp_path / "m" / "meta.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="unreadable"):
        load_detector(tmp_path / "m")


@pytest.mark.parametrize(
    "channels", [["flow", "pressure", "temp"], ["pressure", "flow", "temp", "vibration"], ["a", "b", "c", "d"]]
)
def test_a_different_channel_list_is_refused(saved, channels) -> None:
    with pytest.raises(ModelLoadError, match=r"fitted on channels \['flow', 'pressure', 'temp', 'vibration'\]"):
        load_detector(saved, channels=channels)


def _probe(path) -> np.ndarray:
    det = load_detector(path)
    det.generator.manual_seed(123)
    return det.score_many(data(64, 9)).nll


@pytest.mark.parametrize("fail_at", [1, 4, 8])
def test_a_failed_save_leaves_the_old_model_loadable(saved, tmp_path, monkeypatch, fail_at) -> None:
    det = fresh(saved, tmp_path, "m")
    before = _probe(tmp_path / "m")
    det.learn_many(det.score_many(data(256, 3)))  # the model in memory now differs from the one on disk
    calls = {"n": 0}
    real = torch.save

    def failing(obj, f, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise OSError("disk full")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing)
    with pytest.raises(OSError, match="disk full"):
        save_detector(det, tmp_path / "m")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"], "no temporary directory is left behind"
    np.testing.assert_array_equal(_probe(tmp_path / "m"), before)
    save_detector(det, tmp_path / "m")  # and a later save still works and replaces it
    assert not np.array_equal(_probe(tmp_path / "m"), before)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.old", "m"], "one previous generation is kept"
    np.testing.assert_array_equal(_probe(tmp_path / ".m.old"), before)


def test_a_save_that_fails_at_the_final_rename_leaves_the_old_model_loadable(saved, tmp_path, monkeypatch) -> None:
    det = fresh(saved, tmp_path, "m")
    before = _probe(tmp_path / "m")
    real = os.rename

    def failing(src, dst):  # type: ignore[no-untyped-def]
        if os.path.basename(str(src)).startswith(".m.") and not str(src).endswith(".old") and str(dst).endswith("/m"):
            raise OSError("rename failed")
        return real(src, dst)

    monkeypatch.setattr(persistence.os, "rename", failing)
    with pytest.raises(OSError, match="rename failed"):
        save_detector(det, tmp_path / "m")
    monkeypatch.undo()
    np.testing.assert_array_equal(_probe(tmp_path / "m"), before)
