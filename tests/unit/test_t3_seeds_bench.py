"""The per-seed T3 runner: fits cached per seed and reused, learning overrides applied, fit overrides fitted apart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from series_kit import write_series

from benchmarks.t3_seeds import main, run_pair
from streammoe.files.offline import score_stream
from streammoe.model.config import ModelConfig
from streammoe.state.persistence import load_detector

C = 4


@pytest.fixture()
def data_root(tmp_path: Path) -> Path:
    """Machine b runs far from machine a; b.test holds a few spikes."""
    rng = np.random.default_rng(0)
    (tmp_path / "smd").mkdir()
    write_series(tmp_path / "smd/machine-1-2.train.csv.gz", rng.normal(0, 1, (600, C)), None)
    write_series(tmp_path / "smd/machine-1-3.train.csv.gz", rng.normal(8, 1, (1200, C)), None)
    test = rng.normal(8, 1, (400, C))
    labels = np.zeros(400, np.int8)
    labels[::50] = 1
    test[labels == 1] += 12
    write_series(tmp_path / "smd/machine-1-3.test.csv.gz", test, labels)
    return tmp_path


def test_fits_are_cached_per_seed_and_learning_settings_reach_the_stream(
    data_root: Path, tmp_path: Path, capsys
) -> None:
    cache = tmp_path / "fits"
    assert main(["--seeds", "0", "--pairs", "0", "--data-root", str(data_root), "--cache", str(cache)]) == 0
    out = json.loads(capsys.readouterr().out)
    pair = out["pairs"]["machine-1-2->machine-1-3"]
    assert 0 <= out["mean_far_b_train_2nd_half"] == pair["far_b_train_2nd_half"] <= 1
    assert pair["experts"] > 1, "machine b became a new expert while learning"
    fit_dir = cache / "machine-1-2-seed0"
    stamp = fit_dir.stat().st_mtime_ns
    frozen = run_pair(data_root, "machine-1-2", "machine-1-3", 0, ["novelty.enabled=false"], cache)
    assert fit_dir.stat().st_mtime_ns == stamp, "the cached fit was reused, not refitted"
    assert frozen["experts"] < pair["experts"], "novelty.enabled=false kept the fitted experts only"
    assert frozen["far_b_train_2nd_half"] > pair["far_b_train_2nd_half"]


def test_a_fit_setting_gets_its_own_cached_fit_and_the_cascade_reaches_the_stream(
    data_root: Path, tmp_path: Path, monkeypatch
) -> None:
    import benchmarks.t3_seeds as t3

    cascades: list[bool] = []

    def spy(*args, **kwargs):
        cascades.append(kwargs["cascade"])
        return score_stream(*args, **kwargs)

    monkeypatch.setattr(t3, "score_stream", spy)
    cache = tmp_path / "fits"
    sets = ["k_tolerance=0.3", "fit_steps=50", "cascade.enabled=true", "learn_min_resp=0.02"]
    run_pair(data_root, "machine-1-2", "machine-1-3", 0, sets, cache)
    fit_dir = cache / "machine-1-2-seed0-fit_steps=50-k_tolerance=0.3"
    assert [p.name for p in cache.iterdir()] == [fit_dir.name], "the fit's settings, not online ones, name the fit"
    fit = load_detector(fit_dir, device="cpu").config
    assert (fit.fit_steps, fit.k_tolerance, fit.learn_min_resp) == (50, 0.3, ModelConfig().learn_min_resp)
    run_pair(data_root, "machine-1-2", "machine-1-3", 0, ["fit_steps=50", "cascade.enabled=false"], cache)
    assert cascades == [True, False], "b is scored with the cascade exactly when the setting enables it"
    with pytest.raises(ValueError, match="may not change the seed"):
        run_pair(data_root, "machine-1-2", "machine-1-3", 0, ["seed=3"], cache)
