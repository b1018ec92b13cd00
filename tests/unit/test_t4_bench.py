"""The multi-mode tracks (T4A, T4B, SPLICE), their metrics, the time-context PCA peer and the mode events of a stream."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from modes_kit import NOVELTY, C, mode_a, mode_b
from series_kit import write_series

from benchmarks.multimode import folder_set, simulator_set
from benchmarks.peers import Extras, PcaT2QPeer, PcaT2QWindowPeer, StreamMoEPeer, TimeContext
from benchmarks.splice import OFFSET, run_splice, splice
from benchmarks.t4 import MultiModeOptions, recall_at_far, run_t4a, run_t4b, switch_metrics
from benchmarks.tracks import BenchOptions, FitCache
from streammoe.cli import main
from streammoe.files.offline import score_stream
from streammoe.model.config import ModelConfig
from streammoe.model.detector import MixtureDetector
from streammoe.testing.process_files import DatasetSpec, write_dataset

SMALL = DatasetSpec(train=300, test=300, fault_run=300, fault_start=100, modes=(0, 3), kinds=("step", "bias"))
FAST = ("PCA-T2+Q", "PCA-T2+Q-window", "IsolationForest")


def _opts(tmp_path: Path, methods: tuple[str, ...] = FAST) -> BenchOptions:
    return BenchOptions(tmp_path, ModelConfig(), methods=methods)


def test_time_context_is_the_same_in_parts_and_in_one_call():
    x = np.random.default_rng(0).normal(size=(57, 3))
    whole = TimeContext(10).transform(x)
    ctx = TimeContext(10)
    parts = np.concatenate([ctx.transform(x[:5]), ctx.transform(x[5:6]), ctx.transform(x[6:])])
    np.testing.assert_allclose(parts, whole, atol=1e-9)
    assert whole.shape == (57, 12)
    np.testing.assert_array_equal(whole[0, 3:6], 0.0)  # no change before the first row
    np.testing.assert_allclose(whole[20, 3:6], x[20] - x[19])
    np.testing.assert_allclose(whole[20, 6:9], x[11:21].std(axis=0), atol=1e-9)
    np.testing.assert_allclose(whole[20, 9:12], x[20] - x[11:21].mean(axis=0), atol=1e-9)


def test_window_peer_sees_a_change_of_dynamics_that_plain_pca_misses():
    """Every row is a normal row, but in random order: the values jump from row to row. Row-wise PCA cannot see it."""
    rng = np.random.default_rng(1)
    t = np.arange(3000)
    slow = np.sin(2 * np.pi * t / 400)[:, None] + 0.05 * rng.normal(size=(3000, 4))
    train, test = slow[:2000], slow[2000:].copy()
    test[500:] = train[rng.permutation(2000)[:500]]
    window, plain = PcaT2QWindowPeer(), PcaT2QPeer()
    for p in (window, plain):
        p.fit(train)
    w, q = window.decide(window.score_many(test)), plain.decide(plain.score_many(test))
    assert w[500:].mean() > 0.9 and w[:500].mean() < 0.05
    assert q[500:].mean() < 0.05


def test_window_peer_keeps_nan_out_of_later_rows():
    rng = np.random.default_rng(2)
    peer = PcaT2QWindowPeer()
    peer.fit(rng.normal(size=(500, 3)))
    x = rng.normal(size=(50, 3))
    x[10, 1] = np.nan
    s = peer.score_many(x)
    assert np.isfinite(s).all() and not peer.decide(s)[30:].any()


def test_recall_at_far_picks_the_threshold_on_normal_rows():
    normal, anomalous = np.arange(1000.0), np.arange(900.0, 1100.0)
    recall, threshold = recall_at_far(normal, anomalous, 0.01)
    assert (normal > threshold).mean() <= 0.01
    assert recall == pytest.approx((anomalous > threshold).mean())
    assert 0.5 < recall < 0.6


def test_switch_metrics_count_events_after_the_switch():
    flagged = np.zeros(1000, np.int8)
    flagged[500:650] = 1
    ex = Extras(
        events=[(256, "mode_added", 1), (768, "mode_added", 2), (900, "mode_retired", 0)], info={"experts_at_end": 3}
    )
    m = switch_metrics(flagged, 500, ex)
    assert m["far_old"] == 0 and m["far_new_1st_half"] == pytest.approx(0.6) and m["far_new_2nd_half"] == 0
    assert m["records_to_mode_added"] == 268 and m["mode_added"] == 1 and m["mode_added_before_switch"] == 1
    assert m["experts_at_end"] == 3
    assert switch_metrics(flagged, 500, Extras())["records_to_mode_added"] is None


def test_score_stream_reports_mode_events_with_their_row():
    rng = np.random.default_rng(0)
    det = MixtureDetector(C, ModelConfig(k_max=4, fit_steps=400, novelty=NOVELTY))
    det.fit(mode_a(rng, 1500))
    x = np.concatenate([mode_a(rng, 500), mode_b(rng, 1500)])
    result, det = score_stream(x, det, [f"c{i}" for i in range(C)], batch_size=128)
    added = [(row, ev) for row, ev in result.events if ev.kind == "mode_added"]
    assert added and 500 + NOVELTY.min_records <= added[0][0] <= len(x)
    assert added[0][0] % 128 == 0 or added[0][0] == len(x)
    assert result.n_experts[added[0][0] :].min() > result.n_experts[:500].max()


def test_streammoe_peer_scores_with_the_cascade_when_its_model_enables_it(monkeypatch):
    """The bench's streammoe scores as the daemon does (`streammoe score` gives every record the full pass)."""
    from streammoe.files import offline

    cascades: list[bool] = []

    def spy(*args, **kwargs):
        cascades.append(kwargs["cascade"])
        return score_stream(*args, **kwargs)

    monkeypatch.setattr(offline, "score_stream", spy)
    rng = np.random.default_rng(0)
    for enabled in (True, False):
        peer = StreamMoEPeer("streammoe", ModelConfig(k_max=2, fit_steps=20, cascade={"enabled": enabled}))
        peer.fit(mode_a(rng, 300))
        assert len(peer.score_many(mode_a(rng, 100))) == 100
    assert cascades == [True, False]


def test_t4a_measures_far_per_mode_recall_per_kind_and_recall_at_far(tmp_path):
    data = simulator_set(0, SMALL)
    cache = FitCache()
    try:
        track = run_t4a(_opts(tmp_path), MultiModeOptions(data), cache)
    finally:
        cache.close()
    assert set(track.summary) == set(FAST)
    for s in track.summary.values():
        for k in ("far_mode0", "far_mode3", "recall_step", "recall_bias", "recall", "recall_at_far1", "far"):
            assert 0.0 <= s[k] <= 1.0
        assert s["auc_roc"] is not None and 0.5 < s["auc_roc"] <= 1.0
    pca = track.summary["PCA-T2+Q"]
    assert pca["recall_at_far1_step"] > 0.9, "a 5 degC step in a measured temperature is plain to see"
    assert len([r for r in track.runs if r.method == "PCA-T2+Q"]) == 2 * (1 + 2)


def test_t4b_streams_a_switch_to_an_unseen_mode(tmp_path):
    data = simulator_set(0, SMALL)
    track = run_t4b(
        _opts(tmp_path, ("PCA-T2+Q", "PCA-T2+Q-window")), MultiModeOptions(data, ((3, 0),), 300), FitCache()
    )
    runs = {r.method: r for r in track.runs}
    assert runs["PCA-T2+Q"].metrics["far_new_2nd_half"] == 1.0, "a static peer alarms on the whole new mode"
    assert set(runs) == {"PCA-T2+Q", "PCA-T2+Q-window"}
    assert runs["PCA-T2+Q"].metrics["records_to_mode_added"] is None
    assert track.summary["PCA-T2+Q"]["switches_with_mode_added"] == 0


def test_folder_source_reads_what_write_dataset_wrote(tmp_path):
    write_dataset(tmp_path, 0, SMALL)
    data = folder_set(tmp_path)
    assert sorted(data.train) == [0, 3] and len(data.tests) == 2 * 3
    assert {r.fault for r in data.tests} == {None, "step", "bias"}
    sw = data.switch(0, 3, 200, seed=0)  # no switch run on disk: the two normal test runs spliced
    assert sw.switch_at == 200 and len(sw.values) == 400


def test_folder_source_reads_a_recorded_switch_run_and_its_mode_names(tmp_path):
    import json

    from streammoe.testing.process import simulate
    from streammoe.testing.process_files import write_series

    write_series(tmp_path / "a.train.csv.gz", simulate(0, 50, seed=1))
    write_series(tmp_path / "sw.csv.gz", simulate([(0, 40), (5, 40)], seed=2))
    files = {
        "a.train.csv.gz": {"mode": 0, "mode_name": "base", "part": "train"},
        "sw.csv.gz": {"part": "switch", "switch": [0, 5], "switch_at": 40, "mode_names": ["base", "turndown"]},
    }
    (tmp_path / "manifest.json").write_text(json.dumps({"files": files}))
    data = folder_set(tmp_path)
    sw = data.switch(0, 5, 999, seed=0)
    assert sw.switch_at == 40 and len(sw.values) == 80 and data.mode_names == {0: "base", 5: "turndown"}


def test_splice_offsets_the_second_machine_and_sets_a_constant_channel_moving():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(size=(1000, 4)), rng.uniform(size=(500, 4))
    a[:, 2] = 0.0
    fit, sw, channel = splice(a, b, 400)
    assert channel == 2 and sw.switch_at == 400 and len(fit) == 400
    np.testing.assert_array_equal(sw.values[:400], a[400:800])
    assert np.ptp(sw.values[400:, 2]) > 0
    np.testing.assert_allclose(sw.values[400:, 0], b[:400, 0] + OFFSET)
    with pytest.raises(ValueError):
        splice(a[:600], b, 400)


def test_splice_track_skips_without_smd_and_runs_with_it(tmp_path):
    assert run_splice(_opts(tmp_path), FitCache(), 200) is None
    rng = np.random.default_rng(0)
    (tmp_path / "smd").mkdir()
    for name in ("machine-1-2", "machine-1-3"):
        x = rng.uniform(size=(500, 4))
        x[:, 1] = 0.0
        write_series(tmp_path / f"smd/{name}.train.csv.gz", x, None)
    opts = BenchOptions(tmp_path, ModelConfig(), methods=("PCA-T2+Q",), pairs=(("machine-1-2", "machine-1-3"),))
    track = run_splice(opts, FitCache(), 200)
    assert track is not None and track.summary["PCA-T2+Q"]["far_new_2nd_half"] == 1.0
    assert any("channel 1" in n for n in track.notes)


def test_bench_command_runs_t4b_on_the_simulator_without_a_datasets_folder(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "bench",
            "--tracks",
            "T4B",
            "--methods",
            "PCA-T2+Q-window",
            "--t4-pairs",
            "4->2",
            "--t4-records",
            "300",
            "--no-plots",
            "--out",
            str(out),
            "--data-root",
            str(tmp_path / "none"),
        ]
    )
    assert code == 0
    report = (out / "report.md").read_text()
    assert "- model overrides: none" in report
    assert "T4 (b)" in report and "4:h-only -> 2:h-rich-10/90" in report and "PCA-T2+Q-window" in report
    capsys.readouterr()
    flags = ["--t4-pairs", "4->2", "--t4-records", "300", "--no-plots", "--data-root", str(tmp_path / "none")]
    for flag, enabled in (("--cascade", True), ("--no-cascade", False)):
        assert main(["bench", "--tracks", "T4B", "--methods", "PCA-T2+Q", *flags, "--out", str(out), flag]) == 0
        assert f"- model overrides: {{'cascade': {{'enabled': {enabled}}}}}" in (out / "report.md").read_text()
    capsys.readouterr()
    assert main(["bench", "--tracks", "T4B", "--methods", "nope", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("streammoe bench: error: unknown method(s) ['nope']; known: ")
