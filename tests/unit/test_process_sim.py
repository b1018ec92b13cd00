"""The process simulator does what docs/process-simulator.md says: modes, parked valves, faults, switches, files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streammoe.files.series import read_series
from streammoe.testing.process import CHANNELS, FAULT_KINDS, MODES, Fault, simulate
from streammoe.testing.process_files import DatasetSpec, write_dataset, write_series
from streammoe.testing.process_spec import PARKED

N = 1200
START = 400


def test_shape_names_and_finite_values():
    run = simulate(0, 500, seed=3)
    assert len(CHANNELS) >= 40 and len(set(CHANNELS)) == len(CHANNELS)
    assert run.values.shape == (500, len(CHANNELS))
    assert np.isfinite(run.values).all()
    assert not run.labels.any() and (run.mode == 0).all()


def test_same_seed_same_run_other_seed_other_run():
    a, b = simulate(1, 800, seed=7), simulate(1, 800, seed=7)
    np.testing.assert_array_equal(a.values, b.values)
    c = simulate(1, 800, seed=8)
    assert not np.allclose(a.values, c.values)
    f1 = simulate(1, 800, faults=[Fault("variation", 200)], seed=7)
    f2 = simulate(1, 800, faults=[Fault("variation", 200)], seed=7)
    np.testing.assert_array_equal(f1.values, f2.values)


def test_channels_are_correlated_and_noisy():
    """Not 46 independent noises: within a mode the disturbances and loops tie channels together (a tight loop
    hides its own measurement's share), and across modes nearly every channel moves with others."""
    v = simulate(0, 2000, seed=1).values
    assert (v.std(axis=0) > 0).all()
    partners = (np.abs(np.corrcoef(v.T)) > 0.5).sum(axis=1) - 1
    assert (partners >= 1).sum() >= 20
    pooled = np.concatenate([simulate(m, 500, seed=m).values for m in range(len(MODES))])
    partners = (np.abs(np.corrcoef(pooled.T)) > 0.8).sum(axis=1) - 1
    assert (partners >= 1).sum() >= 40


@pytest.mark.parametrize("mode", sorted(PARKED))
def test_parked_valves_are_exactly_constant_in_mode_and_move_elsewhere(mode):
    run = simulate(mode, N, seed=mode)
    for valve in PARKED[mode]:
        col = run.column(valve)
        assert (col == 0.0).all(), f"{valve} not parked at exactly 0 in mode {mode}"
        if valve.startswith("feed_"):
            assert (run.column(valve.replace("_valve", "_flow")) == 0.0).all()
        moving_in = [m for m in range(len(MODES)) if valve not in PARKED.get(m, ())]
        assert moving_in
        for m in moving_in:
            other = simulate(m, 600, seed=m).column(valve)
            assert other.min() > 1.0 and other.std() > 0.1, f"{valve} should move in mode {m}"


def test_modes_differ_by_hundreds_of_in_mode_stds():
    runs = [simulate(m, 1500, seed=20 + m).values for m in range(len(MODES))]
    feeds = [CHANNELS.index(f"feed_{f}_flow") for f in "de"]
    g_share = CHANNELS.index("product_g_pct")
    biggest = []
    for i in range(len(runs)):
        for j in range(len(runs)):
            if i == j:
                continue
            sd = np.maximum(runs[i].std(axis=0), 1e-9)
            shift = np.abs(runs[j].mean(axis=0) - runs[i].mean(axis=0)) / sd
            shift = np.where(runs[i].std(axis=0) > 0, shift, 0.0)  # parked channels: no finite std
            assert (shift > 10).sum() >= 10, f"modes {i}->{j} differ in too few channels"
            biggest.append(max(shift[feeds].max(), shift[g_share]))
    assert min(biggest) >= 40
    assert np.median(biggest) >= 200


def _pair(kind: str, mode: int, seed: int = 5):
    normal = simulate(mode, N, seed=seed)
    faulty = simulate(mode, N, faults=[Fault(kind, START)], seed=seed)
    return normal, faulty


@pytest.mark.parametrize("mode", range(len(MODES)))
@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_each_fault_kind_changes_the_run_from_its_start_in_each_mode(kind, mode):
    normal, faulty = _pair(kind, mode)
    np.testing.assert_array_equal(faulty.values[:START], normal.values[:START])
    assert not faulty.labels[:START].any() and faulty.labels[START:].all()
    sd = np.maximum(normal.values.std(axis=0), 1e-9)
    gap = np.abs(faulty.values[START:] - normal.values[START:]) / sd
    assert (gap.max(axis=0) > 3).sum() >= 2, f"{kind} barely shows in mode {mode}"


def test_step_raises_the_cooling_water_inlet_temperature_by_5():
    normal, faulty = _pair("step", 0)
    d = faulty.column("reactor_cw_inlet_temp")[START:] - normal.column("reactor_cw_inlet_temp")[START:]
    assert abs(d.mean() - 5.0) < 0.05
    assert (
        faulty.column("reactor_cw_valve")[START + 200 :].mean()
        > normal.column("reactor_cw_valve")[START + 200 :].mean() + 1.5
    )


def test_drift_grows():
    normal, faulty = _pair("drift", 0)
    d = np.abs(faulty.column("product_impurity_pct") - normal.column("product_impurity_pct"))[START:]
    third = len(d) // 3
    assert d[:50].mean() < 0.05 and d[-third:].mean() > 3 * d[third : 2 * third].mean() / 2 > 0


def test_variation_adds_variance_not_a_shift():
    normal, faulty = _pair("variation", 3)
    a, b = normal.column("purge_a_pct")[START:], faulty.column("purge_a_pct")[START:]
    assert b.std() > 2 * a.std()
    assert abs(b.mean() - a.mean()) < a.std() + 0.2 * b.std()


def test_sticking_valve_moves_in_jumps():
    normal, faulty = _pair("sticking", 0)
    moves_n = np.diff(normal.column("reactor_cw_valve")[START:])
    moves_f = np.diff(faulty.column("reactor_cw_valve")[START + 5 :])
    assert (moves_n != 0).mean() > 0.99
    assert (moves_f != 0).mean() < 0.3
    assert np.abs(moves_f[moves_f != 0]).min() > 3.0
    assert faulty.column("reactor_temp")[START:].std() > 1.5 * normal.column("reactor_temp")[START:].std()


def test_bias_hides_in_its_own_channel_and_shows_downstream():
    normal, faulty = _pair("bias", 0)
    late = slice(START + 200, None)
    assert abs(faulty.column("stripper_temp")[late].mean() - 95.0) < 0.1
    assert faulty.column("steam_flow")[late].mean() < normal.column("steam_flow")[late].mean() - 20
    assert faulty.column("product_impurity_pct")[late].mean() > normal.column("product_impurity_pct")[late].mean() + 0.2


def test_oscillation_has_a_30_record_period():
    normal, faulty = _pair("oscillation", 0)
    d = faulty.column("reactor_cw_flow")[START:] - normal.column("reactor_cw_flow")[START:]
    spectrum = np.abs(np.fft.rfft(d - d.mean()))
    freq = np.fft.rfftfreq(len(d))
    assert abs(1 / freq[spectrum.argmax()] - 30) < 2


def test_fault_with_an_end_stops_being_labelled():
    run = simulate(0, 900, faults=[Fault("step", 300, end=600)], seed=1)
    assert run.labels[300:600].all() and not run.labels[:300].any() and not run.labels[600:].any()


def test_abrupt_switch_parks_and_unparks_valves_and_is_not_a_fault():
    run = simulate([(0, 400), (3, 400), (5, 400)], seed=2)
    assert (run.mode[:400] == 0).all() and (run.mode[400:800] == 3).all() and (run.mode[800:] == 5).all()
    assert not run.labels.any()
    e_valve = run.column("feed_e_valve")
    assert (e_valve[:400] > 20).all() and (e_valve[402:800] == 0).all() and (e_valve[850:] > 10).all()
    d_flow = run.column("feed_d_flow")
    assert d_flow[390:400].mean() < 3700 and d_flow[700:800].mean() > 7900


@pytest.mark.parametrize(
    "bad",
    [
        lambda: simulate(9, 10),
        lambda: simulate(0),
        lambda: simulate([(0, 0)]),
        lambda: simulate(0, 100, faults=[Fault("step", 200)]),
        lambda: Fault("leak", 10),
        lambda: Fault("step", 10, end=5),
    ],
)
def test_bad_arguments_are_refused(bad):
    with pytest.raises(ValueError):
        bad()


def test_series_file_round_trip_keeps_parked_zeros(tmp_path):
    run = simulate(3, 300, faults=[Fault("bias", 100)], seed=4)
    path = write_series(tmp_path / "r.csv.gz", run)
    s = read_series(path)
    assert s.channels == list(CHANNELS)
    assert s.labels is not None and (s.labels == run.labels).all()
    np.testing.assert_allclose(s.values, run.values, rtol=1e-6, atol=1e-6)
    assert (s.values[:, CHANNELS.index("feed_e_valve")] == 0).all()
    assert s.timestamps[0] == "2026-01-01 00:00:00" and s.timestamps[1] == "2026-01-01 00:01:00"


def test_dataset_writes_every_mode_and_fault_with_a_manifest(tmp_path):
    spec = DatasetSpec(train=100, test=100, fault_run=150, fault_start=50, modes=(0, 3), kinds=("step", "bias"))
    manifest = json.loads(write_dataset(tmp_path, seed=1, spec=spec).read_text())
    assert sorted(manifest["files"]) == sorted(
        f"mode{m}.{p}.csv.gz" for m in (0, 3) for p in ("train", "test", "fault-step", "fault-bias")
    )
    entry = manifest["files"]["mode3.fault-bias.csv.gz"]
    assert entry["fault"] == "bias" and entry["fault_start"] == 50 and entry["mode_name"] == MODES[3].name
    s = read_series(tmp_path / "mode3.fault-bias.csv.gz")
    assert s.labels is not None and s.labels[:50].sum() == 0 and s.labels[50:].all()
    seeds = [e["seed"] for e in manifest["files"].values()]
    assert len(set(seeds)) == len(seeds)
