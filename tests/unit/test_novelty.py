"""New operating modes: a sustained coherent run grows one expert; scattered anomalies and bursts never do."""

from __future__ import annotations

import numpy as np
import pytest
from modes_kit import NOVELTY, C, mode_a, mode_b, stream

from streammoe.model.config import ModelConfig, NoveltyConfig
from streammoe.model.detector import MixtureDetector


@pytest.fixture()
def detector():
    rng = np.random.default_rng(0)
    det = MixtureDetector(C, ModelConfig(k_max=4, fit_steps=400, novelty=NOVELTY))
    det.fit(mode_a(rng, 3000))
    assert det.model.n_active == 1
    return det


def test_sustained_new_mode_adds_exactly_one_expert_and_alerts_stop(detector) -> None:
    rng = np.random.default_rng(1)
    _flags_a, events_a = stream(detector, mode_a(rng, 2000))
    flags_b, events = stream(detector, mode_b(rng, 4000))
    assert events_a == []
    added = [e for e in events if e.kind == "mode_added"]
    assert len(added) == 1 and detector.model.n_active == 2
    e = added[0]
    assert e.size >= NOVELTY.min_records
    assert 10_000 <= e.first_ref <= e.last_ref < 10_000 + 1000, "the triggering records are the first B records"
    # Within a bounded number of records after B starts; alerts during the transition, normal afterwards.
    assert flags_b[: NOVELTY.min_records].mean() > 0.95
    assert flags_b[1500:].mean() < 0.02
    flags_back, events_back = stream(detector, mode_a(rng, 1000))
    assert flags_back.mean() < 0.02 and events_back == []


def test_scattered_anomalies_never_make_an_expert_and_still_alert(detector) -> None:
    rng = np.random.default_rng(2)
    x = mode_a(rng, 50_000)
    spikes = rng.choice(len(x), 500, replace=False)
    x[spikes] += rng.normal(0, 1, (500, C)).astype(np.float32) * 20 + 20 * np.sign(rng.normal(size=(500, C)))
    flags, events = stream(detector, x, batch=1024)
    assert [e for e in events if e.kind == "mode_added"] == []
    assert detector.model.n_active == 1
    assert detector.counters["unlocks"] == 0
    assert flags[spikes].mean() > 0.95
    normal = np.ones(len(x), bool)
    normal[spikes] = False
    assert flags[normal].mean() < 0.01


# Enough candidate steps that B's candidate is as tight as a fitted expert: at 300-600 steps in 5 channels its
# median NLL sat within 0.4 nats of the rate trigger's bar (rate_max_excess 0), and passed or not with the
# thread count.
RATE = NOVELTY.model_copy(update={"rate_window": 3000, "candidate_steps": 800})
RATE_MODEL = ModelConfig(k_max=4, fit_steps=400, n_samples=4, novelty=RATE)


def scattered(rng, n: int, share: float) -> np.ndarray:
    """Sorted positions of share * n records picked at random among n: scattered, not a run."""
    return np.sort(rng.choice(n, int(n * share), replace=False))


def test_a_mode_recurring_scattered_in_time_adds_one_expert_and_its_alerts_stop() -> None:
    # Mode B shows in single records among mode A at 8 %: never the dense run the first trigger needs, but far
    # above the ~1 % of records below the learning threshold when nothing changed (the rate trigger).
    rng = np.random.default_rng(9)
    det = MixtureDetector(C, RATE_MODEL)
    det.fit(mode_a(rng, 3000))
    x = mode_a(rng, 10_000)
    at = scattered(rng, len(x), 0.08)
    x[at] = mode_b(rng, len(at))
    flags, events = stream(det, x)
    added = [e for e in events if e.kind == "mode_added"]
    assert len(added) == 1 and det.model.n_active == 2
    # Within two rate windows of B's first records: a first try may be rejected (the outcome moves with torch's
    # thread count, which earlier tests in the same process change), the next one must succeed.
    assert added[0].last_ref < 10_000 + 2 * RATE.rate_window
    is_b = np.zeros(len(x), bool)
    is_b[at] = True
    late = np.arange(len(x)) >= len(x) // 2
    assert flags[is_b & ~late][:100].mean() > 0.95, "B alerts until it is learned"
    assert flags[is_b & late].mean() < 0.05 and flags[~is_b & late].mean() < 0.02


def test_scattered_anomalies_above_the_rate_trigger_never_make_an_expert_and_still_alert() -> None:
    # 6 % scattered anomalies keep the rate trigger firing; each candidate spreads over records with nothing in
    # common, beats the mixture by far, but is much looser than the known mode, so it is never accepted.
    rng = np.random.default_rng(10)
    det = MixtureDetector(C, RATE_MODEL.model_copy(update={"novelty": RATE.model_copy(update={"lockin_share": 0.03})}))
    det.fit(mode_a(rng, 3000))
    x = mode_a(rng, 12_000)
    spikes = scattered(rng, len(x), 0.06)
    x[spikes] += rng.normal(0, 1, (len(spikes), C)).astype(np.float32) * 20 + 20 * np.sign(
        rng.normal(size=(len(spikes), C))
    )
    tried, lockin, flags = [], [], []
    for i in range(0, len(x), 1024):
        scored = det.score_many(x[i : i + 1024])
        report = det.learn_many(scored)
        tried.append(report.candidate)
        lockin.append(report.lockin)
        flags.append(scored.is_anomaly)
        assert [e for e in report.events if e.kind == "mode_added"] == []
    assert tried.count("looser than the known modes") >= 2, tried
    assert det.model.n_active == 1
    # 7 % of the expert's records go unexplained, past the lock-in share: lock-in is tested and never found (a
    # refit on the spikes is looser than the known modes).
    assert "refit looser than the known modes" in lockin, lockin
    assert det.counters["unlocks"] == 0
    f = np.concatenate(flags)
    normal = np.ones(len(x), bool)
    normal[spikes] = False
    assert f[spikes].mean() > 0.95 and f[normal].mean() < 0.01


def test_a_mode_that_widened_is_unlocked_instead_of_alerting_for_long() -> None:
    # The same mode, its spread 1.6x wider: ~17 % of its records fall past the learning threshold's score, so the
    # calibration's tail collapses onto the clipped scores and they all alert (lock-in). Learning from the rest
    # alone takes ~10,000 records to bring the alerts down; the lock-in check unlocks it within a few batches.
    def run(lockin_share: float) -> tuple[np.ndarray, int]:
        rng = np.random.default_rng(11)
        det = MixtureDetector(
            C, ModelConfig(k_max=4, fit_steps=400, novelty=NOVELTY.model_copy(update={"lockin_share": lockin_share}))
        )
        det.fit(mode_a(rng, 3000))
        flags, events = stream(det, mode_a(rng, 8000) * 1.6)
        assert [e for e in events if e.kind == "mode_added"] == []
        return flags, det.counters["unlocks"]

    flags, unlocks = run(0.05)
    assert unlocks >= 1
    assert flags[:256].mean() > 0.1 and flags[2 * NOVELTY.lockin_window :].mean() < 0.01
    locked, unlocks = run(0.0)
    assert unlocks == 0 and locked[2 * NOVELTY.lockin_window : 3 * NOVELTY.lockin_window].mean() > 0.05


def test_burst_shorter_than_the_memory_minimum_makes_no_expert(detector) -> None:
    rng = np.random.default_rng(3)
    x = np.concatenate([mode_a(rng, 1000), mode_b(rng, NOVELTY.min_records - 100), mode_a(rng, 4000)])
    flags, events = stream(detector, x)
    assert events == [] and detector.model.n_active == 1
    assert flags[1000 : 1000 + NOVELTY.min_records - 100].mean() > 0.95


def test_operator_can_mark_an_expert_as_fault(detector) -> None:
    rng = np.random.default_rng(4)
    stream(detector, mode_b(rng, 3000))
    new = [k for k, s in detector.expert_status().items() if k != 0]
    assert len(new) == 1
    assert detector.score_many(mode_b(rng, 200)).is_anomaly.mean() < 0.05
    detector.mark_expert(new[0], "fault")
    assert detector.score_many(mode_b(rng, 200)).is_anomaly.all()
    assert detector.score_many(mode_a(rng, 200)).is_anomaly.mean() < 0.05
    with pytest.raises(ValueError, match="not active"):
        detector.mark_expert(3, "fault")


def test_idle_expert_is_retired_and_duplicates_are_merged() -> None:
    rng = np.random.default_rng(5)
    two = np.concatenate([mode_a(rng, 2000), mode_b(rng, 2000)])
    cfg = ModelConfig(
        k_max=4,
        fit_steps=400,
        half_life=500.0,
        novelty=NoveltyConfig(retire_weight=0.05, retire_after=1500, merge_every=10**9),
    )
    det = MixtureDetector(C, cfg)
    det.fit(two)
    assert det.model.n_active == 2
    _, events = stream(det, mode_a(rng, 6000))
    retired = [e for e in events if e.kind == "mode_retired"]
    assert len(retired) == 1 and det.model.n_active == 1
    assert det.expert_status() == {int(np.argmax(det.mixture_weights())): "learned"}

    cfg = ModelConfig(k_max=4, fit_steps=400, novelty=NoveltyConfig(merge_every=1000, merge_margin=2.0))
    det = MixtureDetector(C, cfg)
    det.fit(mode_a(rng, 4000), k=2)  # two experts forced onto one mode: duplicates
    assert det.model.n_active == 2
    _, events = stream(det, mode_a(rng, 1500))
    merged = [e for e in events if e.kind == "mode_merged"]
    assert len(merged) == 1 and merged[0].into != merged[0].expert and det.model.n_active == 1
    np.testing.assert_allclose(det.mixture_weights().sum(), 1.0, atol=1e-6)


def test_a_fault_burst_just_before_a_new_mode_is_not_part_of_its_run(detector) -> None:
    rng = np.random.default_rng(6)
    burst = mode_a(rng, 80)
    burst[:, 0] += 25.0  # a fault: one channel far off, for 80 records
    x = np.concatenate([mode_a(rng, 500), burst, mode_a(rng, 150), mode_b(rng, 2000)])
    _, events = stream(detector, x)
    added = [e for e in events if e.kind == "mode_added"]
    assert len(added) == 1
    assert added[0].first_ref >= 10_000 + 730 - 5, "the run starts at mode B, not at the fault burst"


def test_drift_signal_fires_after_the_likelihood_level_changes_and_not_before() -> None:
    rng = np.random.default_rng(7)
    det = MixtureDetector(4, ModelConfig(k_max=3, fit_steps=200))
    det.fit(rng.normal(0, 1, (3000, 4)).astype(np.float32))
    drift = []
    for i in range(80):
        x = rng.normal(0, 1, (256, 4)).astype(np.float32) * (1.0 if i < 40 else 1.6)
        drift.append(det.learn_many(det.score_many(x)).drift)
    hits = np.flatnonzero(drift)
    assert hits.size >= 1 and hits[0] >= 40 and hits[0] < 60
    assert det.counters["drifts"] == hits.size


def test_operator_marked_experts_are_never_retired_or_merged() -> None:
    rng = np.random.default_rng(8)
    cfg = ModelConfig(
        k_max=4,
        fit_steps=400,
        half_life=500.0,
        novelty=NoveltyConfig(retire_weight=0.05, retire_after=1500, merge_every=1000, merge_margin=1e6),
    )
    det = MixtureDetector(C, cfg)
    det.fit(np.concatenate([mode_a(rng, 2000), mode_b(rng, 2000)]))
    slot_b = int(det.score_many(mode_b(rng, 10)).mode[0])
    det.mark_expert(slot_b, "fault")
    _, events = stream(det, mode_a(rng, 6000))  # B fades (and any pair would merge at this margin)
    assert events == []
    assert det.expert_status()[slot_b] == "fault"
    assert det.score_many(mode_b(rng, 50)).is_anomaly.all()
