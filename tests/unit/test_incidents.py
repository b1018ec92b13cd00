"""The incident tracker: debounce, immediate opening, aggregates, quiet and stale resolution, ids, state."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streammoe.incidents import (
    Batch,
    IncidentSettings,
    IncidentTracker,
    Source,
    incident_id,
)
from streammoe.incidents.series import track_series

CHANNELS = ["a", "b", "c"]


def settings(**kw: object) -> IncidentSettings:
    base: dict = {"open_k": 3, "open_n": 5, "quiet_records": 4, "quiet_ms": 0, "update_interval_ms": 0}
    return IncidentSettings(**{**base, **kw})


def batch(
    flags: list[int],
    start: int = 0,
    asset: str | list[str] = "pump-1",
    critical: list[int] | None = None,
    ts: np.ndarray | None = None,
    share: np.ndarray | None = None,
) -> Batch:
    n = len(flags)
    f = np.asarray(flags, bool)
    offsets = np.arange(start, start + n)
    return Batch(
        asset=[asset] * n if isinstance(asset, str) else asset,
        ts=offsets * 1000 if ts is None else ts,
        partition=np.zeros(n, np.int32),
        offset=offsets,
        flagged=f,
        critical=np.zeros(n, bool) if critical is None else np.asarray(critical, bool),
        score=np.where(f, 3.0 + offsets / 1000, 0.5),
        p_value=np.where(f, 10 ** -(3.0 + offsets / 1000), 0.3),
        mode=np.where(f, offsets % 2, 0),
        share=share,
        topic="in",
    )


def statuses(changes: list) -> list[str]:
    return [c.status for c in changes]


def test_one_stray_warning_does_not_open_but_k_of_n_does() -> None:
    t = IncidentTracker("global", settings(), CHANNELS)
    assert t.observe(batch([0, 1, 0, 0, 0, 0, 0, 0, 0, 0])) == []
    assert t.assets == {}  # nothing pending once the window has passed
    changes = t.observe(batch([1, 0, 1, 0, 1], start=10))
    assert statuses(changes) == ["opened"]
    body = changes[0].body
    assert body["opened_by"]["offset"] == 14 and body["first_source"]["offset"] == 10
    assert body["count"] == 3 and body["records"] == 5 and changes[0].sequence == 0


def test_debounce_window_spans_batches() -> None:
    t = IncidentTracker("global", settings(), CHANNELS)
    assert t.observe(batch([0, 0, 1, 1], start=0)) == []
    changes = t.observe(batch([1, 0], start=4))
    assert statuses(changes) == ["opened"]
    assert changes[0].body["first_source"]["offset"] == 2 and changes[0].body["opened_by"]["offset"] == 4


def test_a_critical_record_opens_at_once_and_resolves_after_the_quiet_period() -> None:
    t = IncidentTracker("global", settings(), CHANNELS)
    flags = [0, 0, 1, 0, 0, 0, 0, 0]
    changes = t.observe(batch(flags, critical=flags))
    assert statuses(changes) == ["opened", "resolved"]
    opened, resolved = changes
    assert opened.body["resolution"] is None and opened.body["severity"] == "critical"
    assert resolved.sequence == 1 and resolved.body["resolution"]["by"] == "quiet"
    assert resolved.body["resolution"]["source"]["offset"] == 6  # the 4th quiet record after row 2
    assert t.assets == {}


def test_quiet_period_needs_records_and_ts_span() -> None:
    t = IncidentTracker("global", settings(quiet_ms=10_000), CHANNELS)
    flags = [1] + [0] * 12
    changes = t.observe(batch(flags, critical=flags))
    assert changes[-1].status == "resolved"
    assert changes[-1].body["resolution"]["ts"] == 10_000  # 4 records passed at ts 4000, the span at 10000


def test_anomalies_inside_the_quiet_period_extend_the_incident() -> None:
    t = IncidentTracker("global", settings(), CHANNELS)
    flags = [1, 1, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0]
    changes = t.observe(batch(flags))
    assert statuses(changes) == ["opened"]
    changes = t.observe(batch([0], start=13))
    assert statuses(changes) == ["resolved"]
    body = changes[0].body
    assert body["count"] == 5 and body["first_ts"] == 0 and body["last_ts"] == 9000
    assert body["last_source"]["offset"] == 9 and body["records"] == 10


def test_two_incidents_in_one_batch_have_their_own_ids() -> None:
    t = IncidentTracker("global", settings(), CHANNELS)
    flags = [1, 1, 1] + [0] * 6 + [1, 1, 1] + [0] * 6
    changes = t.observe(batch(flags))
    assert statuses(changes) == ["opened", "resolved", "opened", "resolved"]
    assert changes[0].body["incident_id"] != changes[2].body["incident_id"]
    assert changes[2].body["first_source"]["offset"] == 9


def test_aggregates() -> None:
    share = np.tile(np.array([[0.1, 0.7, 0.2]], np.float32), (6, 1))
    t = IncidentTracker("global", settings(top_channels=2), CHANNELS)
    flags = [1, 1, 1, 1, 0, 0]
    crit = [0, 0, 0, 1, 0, 0]
    body = t.observe(batch(flags, critical=crit, share=share))[0].body
    assert body["severity"] == "critical"
    assert body["peak_score"] == pytest.approx(3.003) and body["min_p_value"] == pytest.approx(10**-3.003)
    assert body["modes"] == [{"mode": 0, "share": 0.5}, {"mode": 1, "share": 0.5}]
    assert [c["channel"] for c in body["top_channels"]] == ["b", "c"]
    assert body["top_channels"][0]["share"] == pytest.approx(0.7)


def test_updates_are_rate_limited_by_ts_but_severity_goes_out_at_once() -> None:
    t = IncidentTracker("global", settings(update_interval_ms=5000), CHANNELS)
    assert statuses(t.observe(batch([1, 1, 1]))) == ["opened"]
    assert statuses(t.observe(batch([1], start=3))) == []  # 1 s of ts later
    assert statuses(t.observe(batch([1], start=7))) == ["updated"]  # 5 s after the last message
    up = t.observe(batch([1], start=8, critical=[1]))
    assert statuses(up) == ["updated"] and up[0].body["severity"] == "critical" and up[0].sequence == 2
    assert statuses(t.observe(batch([0], start=9))) == []  # nothing new: nothing published


def test_assets_are_tracked_apart_in_one_batch() -> None:
    t = IncidentTracker("global", settings(), CHANNELS)
    assets = ["p1", "p2"] * 6
    flags = [1, 0] * 3 + [0, 0] * 3  # p1: 1 1 1 0 0 0, p2 all normal
    changes = t.observe(batch(flags, asset=assets))
    assert [c.body["asset"] for c in changes] == ["p1"]
    assert changes[0].body["records"] == 3 and changes[0].body["last_source"]["offset"] == 4


def test_ids_come_from_input_positions() -> None:
    a = IncidentTracker("s1", settings(), CHANNELS).observe(batch([1, 1, 1]))[0].body["incident_id"]
    b = IncidentTracker("s1", settings(), CHANNELS).observe(batch([1, 1, 1]))[0].body["incident_id"]
    assert a == b == incident_id("s1", "pump-1", Source("in", 0, 2))
    assert incident_id("s2", "pump-1", Source("in", 0, 2)) != a
    assert incident_id("s1", "pump-1", Source("in", 1, 2)) != a


def test_a_silent_asset_resolves_as_stale() -> None:
    t = IncidentTracker("global", settings(stale_after_s=60), CHANNELS)
    t.observe(batch([1, 1, 1]), now=100.0)
    assert t.expire(150.0) == []
    changes = t.expire(161.0)
    assert statuses(changes) == ["resolved"] and changes[0].body["resolution"] == {
        "by": "stale",
        "ts": None,
        "source": None,
    }
    assert t.assets == {}


def test_state_round_trips_through_json_and_the_incident_goes_on() -> None:
    t = IncidentTracker("global", settings(), CHANNELS)
    first = t.observe(batch([0, 1, 1, 1, 0, 1], share=np.full((6, 3), 1 / 3, np.float32)))
    restored = IncidentTracker("global", settings(), CHANNELS)
    restored.load_state(json.loads(json.dumps(t.to_state())), now=5.0)
    a = t.observe(batch([1, 0, 0, 0, 0], start=6))
    b = restored.observe(batch([1, 0, 0, 0, 0], start=6))
    assert statuses(a) == statuses(b) == ["resolved"]
    assert [c.body for c in a] == [c.body for c in b]
    assert a[-1].body["incident_id"] == first[0].body["incident_id"] and a[-1].sequence == 1
    assert a[-1].body["count"] == 5


def test_state_of_a_debounce_window_survives() -> None:
    t = IncidentTracker("global", settings(), CHANNELS)
    t.observe(batch([0, 1, 1]))
    restored = IncidentTracker("global", settings(), CHANNELS)
    restored.load_state(json.loads(json.dumps(t.to_state())), now=0.0)
    assert statuses(restored.observe(batch([1], start=3))) == ["opened"]


def test_unknown_state_version_is_refused() -> None:
    with pytest.raises(ValueError, match="version"):
        IncidentTracker("global", settings(), CHANNELS).load_state({"version": 99, "assets": {}}, now=0.0)


def test_mode_added_turns_the_overlapping_incident_into_new_mode() -> None:
    t = IncidentTracker("global", settings(), CHANNELS)
    t.observe(batch([1] * 20))
    changes = t.link_mode_added(2, Source("in", 0, 5), Source("in", 0, 19), {"gain": 3.0})
    assert statuses(changes) == ["updated"]
    body = changes[0].body
    assert body["kind"] == "new_mode" and body["mode_event"]["expert"] == 2
    assert t.link_mode_added(2, Source("in", 0, 5), Source("in", 0, 19)) == []  # once
    assert t.link_mode_added(3, Source("in", 1, 5), Source("in", 1, 19)) == []  # another partition


def test_evidence_k_must_fit_evidence_n() -> None:
    with pytest.raises(ValueError, match="evidence_k"):
        IncidentSettings(evidence_k=11, evidence_n=10)


def test_k_must_fit_n() -> None:
    with pytest.raises(ValueError, match="open_k"):
        IncidentSettings(open_k=5, open_n=3)


def test_track_series_column_marks_each_incident_span() -> None:
    flags = np.zeros(40, bool)
    flags[[5, 6, 8, 20]] = True
    out = track_series(flags, critical=np.isin(np.arange(40), [20]), settings=settings())
    assert len(out.incidents) == 2
    first, second = out.incidents
    assert [i for i, v in enumerate(out.column) if v == first["incident_id"]] == [5, 6, 7, 8]
    assert [i for i, v in enumerate(out.column) if v == second["incident_id"]] == [20]
    assert out.column[9] == out.column[0] == ""


def reference(
    assets: list[str],
    flags: np.ndarray,
    crit: np.ndarray,
    ts: np.ndarray,
    s: IncidentSettings,
    at_once: np.ndarray | None = None,
    p_value: np.ndarray | None = None,
) -> set:
    """The tracker's rules one record at a time: (asset, first, opening, last, count, resolving row). A critical
    record weighs `critical_weight` in the debounce; an `at_once` one (default: every critical) opens at once;
    with `evidence_p_value`, evidence_k alerts or records with a lower `p_value` of the last evidence_n open one.
    """
    at_once = crit if at_once is None else at_once
    evidence = flags | ((np.ones(len(flags)) if p_value is None else p_value) < s.evidence_p_value)
    recent: dict[str, list[tuple[int, int, int, bool]]] = {}
    open_: dict[str, list] = {}
    seen: dict[str, int] = {}
    done = set()
    for row, (a, f, c, t, o, e) in enumerate(zip(assets, flags, crit, ts, at_once, evidence)):
        j = seen.get(a, 0)
        seen[a] = j + 1
        inc = open_.get(a)
        if inc is not None:
            if f:
                inc[2], inc[3], inc[4], inc[5] = row, j, t, inc[5] + 1
            elif j - inc[3] >= s.quiet_records and t - inc[4] >= s.quiet_ms:
                done.add((a, inc[0], inc[1], inc[2], inc[5], row))
                del open_[a]
            continue
        if e:
            weight = (s.critical_weight if c else 1) if f else 0
            r = [x for x in recent.get(a, []) if x[0] > j - s.window] + [(j, row, weight, bool(f))]
            recent[a] = r
            by_alerts = [x for x in r if x[0] > j - s.open_n]
            by_evidence = [x for x in r if x[0] > j - s.evidence_n]
            window = None
            if f and (o or sum(x[2] for x in by_alerts) >= s.open_k):
                window = by_alerts
            elif s.evidence_p_value > 0 and len(by_evidence) >= s.evidence_k:
                window = by_evidence
            if window is not None:
                open_[a] = [window[0][1], row, row, j, t, len(window)]
                recent[a] = []
    return done | {(a, i[0], i[1], i[2], i[5], None) for a, i in open_.items()}


@pytest.mark.parametrize(
    "seed,spikes,evidence",
    [
        (0, False, 0.0),
        (1, False, 0.0),
        (2, False, 0.0),
        (3, True, 0.0),
        (4, True, 0.0),
        (5, False, 0.2),
        (6, True, 0.2),
        (7, True, 0.05),
    ],
)
def test_a_large_mixed_batch_matches_the_record_by_record_rules(seed: int, spikes: bool, evidence: float) -> None:
    """50k records over 100 assets in random batch sizes give the incidents of a per-record loop (`spikes`: only
    some critical records open at once, the others weigh double in the debounce; `evidence`: records with a
    p-value below it count towards the evidence rule)."""
    rng = np.random.default_rng(seed)
    n = 50_000
    s = settings(
        quiet_records=3, quiet_ms=2500, critical_weight=2, evidence_p_value=evidence, evidence_k=4, evidence_n=7
    )
    assets = [f"a{i}" for i in rng.integers(0, 100, n)]
    flags = rng.random(n) < rng.choice([0.05, 0.3, 0.6])
    crit = flags & (rng.random(n) < (0.3 if spikes else 0.02))
    once = crit & (rng.random(n) < 0.1) if spikes else crit
    p_value = np.where(flags, 1e-4, rng.random(n))
    ts = np.cumsum(rng.integers(0, 60, n))
    t = IncidentTracker("global", s, CHANNELS)
    changes = []
    start = 0
    while start < n:
        stop = min(n, start + int(rng.integers(1, 5000)))
        b = batch(
            flags[start:stop].astype(int).tolist(),
            start=start,
            asset=assets[start:stop],
            critical=crit[start:stop].tolist(),
            ts=ts[start:stop],
        )
        b.at_once = once[start:stop]
        b.p_value = p_value[start:stop]
        changes += t.observe(b)
        start = stop
    got = {
        (
            c.body["asset"],
            c.body["first_source"]["offset"],
            c.body["opened_by"]["offset"],
            c.body["last_source"]["offset"],
            c.body["count"],
            c.body["resolution"]["source"]["offset"],
        )
        for c in changes
        if c.status == "resolved"
    }
    got |= {
        (i.asset, i.first_source.offset, i.opened_by.offset, i.last_source.offset, i.count, None)
        for i in t.open_incidents()
    }
    assert got == reference(assets, flags, crit, ts, s, once, p_value)
    assert len({c.body["incident_id"] for c in changes if c.status == "opened"}) == len(got)
    if evidence:  # the rule is exercised: some incidents open on a record that did not alert
        opened_by = {c.body["opened_by"]["offset"] for c in changes if c.status == "opened"}
        assert any(not flags[o] for o in opened_by)


def test_a_sustained_sub_threshold_stretch_opens_an_incident_only_with_the_evidence_rule() -> None:
    """Five records of p 1e-2 in a row never alert (threshold 1e-3); with evidence_p_value 0.05 and 4 of 6 they
    open an incident whose records are the stretch, which resolves after the quiet period; a lone one does not."""
    p = np.full(30, 0.5)
    p[[2]] = 0.01  # lone
    p[10:15] = 0.01
    b = batch([0] * 30)
    b.p_value = p
    off = IncidentTracker("global", settings(), CHANNELS)
    assert off.observe(b) == []
    on = IncidentTracker("global", settings(evidence_p_value=0.05, evidence_k=4, evidence_n=6), CHANNELS)
    changes = on.observe(b)
    assert statuses(changes) == ["opened", "resolved"]
    body = changes[-1].body
    assert body["first_source"]["offset"] == 10 and body["opened_by"]["offset"] == 13
    assert body["last_source"]["offset"] == 13 and body["count"] == 4  # the window that opened it
    assert body["severity"] == "warning" and body["min_p_value"] == pytest.approx(0.01)
    assert body["resolution"]["source"]["offset"] == 17  # 4 quiet records: records 14 and up do not alert


def test_evidence_records_do_not_keep_an_incident_open() -> None:
    """Once open, only alerts join an incident and hold off its resolution, as without the evidence rule."""
    p = np.full(20, 0.5)
    p[[0, 1, 2, 3, 5, 7, 9]] = 0.01
    b = batch([0] * 20)
    b.p_value = p
    t = IncidentTracker("global", settings(evidence_p_value=0.05, evidence_k=4, evidence_n=6), CHANNELS)
    changes = t.observe(b)
    assert [c.body["resolution"]["source"]["offset"] for c in changes if c.status == "resolved"] == [7]


def test_records_read_again_after_a_restart_are_not_folded_in_twice() -> None:
    """The consumer re-reads from its last commit, before the checkpoint: one incident, counted once."""
    t = IncidentTracker("global", settings(), CHANNELS)
    opened = t.observe(batch([1, 1, 1, 1]))
    saved = json.loads(json.dumps(t.to_state()))
    restored = IncidentTracker("global", settings(), CHANNELS)
    restored.load_state(saved, now=0.0)
    again = restored.observe(batch([1, 1, 1, 1, 1, 0, 0, 0, 0]))  # offsets 0-3 again, then new ones
    assert statuses(again) == ["resolved"]
    assert again[0].body["incident_id"] == opened[0].body["incident_id"] and again[0].body["count"] == 5
    assert again[0].sequence == 1


def test_evidence_of_a_debounce_window_survives_a_restart() -> None:
    """Evidence records are kept in the debounce window's state like alerts: 3 before the checkpoint and 1
    after it open the incident that 4 in one batch would."""
    s = settings(evidence_p_value=0.05, evidence_k=4, evidence_n=6)
    first, second = batch([0, 0, 0]), batch([0, 0], start=3)
    first.p_value, second.p_value = np.full(3, 0.01), np.array([0.01, 0.5])
    t = IncidentTracker("global", s, CHANNELS)
    assert t.observe(first) == []
    restored = IncidentTracker("global", s, CHANNELS)
    restored.load_state(json.loads(json.dumps(t.to_state())), now=0.0)
    changes = restored.observe(second)
    assert statuses(changes) == ["opened"]
    assert changes[0].body["first_source"]["offset"] == 0 and changes[0].body["opened_by"]["offset"] == 3
