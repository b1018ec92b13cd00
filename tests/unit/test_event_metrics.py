"""Event-level metrics of `streammoe bench`: segments, the gap-under-10 grouping, and what each number counts."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.events import add_events, count_events, gap_groups, pool_events, segments
from streammoe.incidents import IncidentSettings


def test_segments_are_runs_of_label_one() -> None:
    assert segments(np.array([0, 1, 1, 0, 1, 0, 0, 1])) == [(1, 2), (4, 4), (7, 7)]
    assert segments(np.zeros(5)) == []


def test_gap_groups_break_at_ten_unflagged_rows() -> None:
    f = np.zeros(60, bool)
    f[[0, 10, 21, 40]] = True  # 9 rows between 0 and 10: one group; 10 rows between 10 and 21: a new one
    assert gap_groups(f) == [(0, 10, 0), (21, 21, 21), (40, 40, 40)]
    assert gap_groups(np.zeros(5, bool)) == []


def test_counts_of_each_metric() -> None:
    labels = np.zeros(200, np.int8)
    labels[50:60] = 1
    labels[100:110] = 1
    labels[150:160] = 1  # never touched
    flagged = np.zeros(200, bool)
    flagged[[10, 55, 56, 105, 108]] = True
    spans = [(10, 10, 10), (45, 56, 56), (103, 104, 104), (106, 108, 108)]
    c = count_events(labels, flagged, spans)
    m = c.metrics()
    assert m["segments"] == 3 and c.detected == 2
    assert m["segment_recall"] == pytest.approx(2 / 3)
    assert m["false_incidents"] == 1 and m["false_per_10k"] == pytest.approx(1e4 / 170)
    assert m["per_detected_segment"] == pytest.approx(1.5)  # 1 for the first, 2 for the second segment
    assert c.delays == [6, 4]  # opened at 56 (segment from 50), first opening 104 (from 100)
    assert m["median_delay"] == 5
    assert c.normal_inside == 1 + 5  # row 10 and rows 45-49
    assert m["normal_flagged"] == pytest.approx(1 / 170)


def test_one_incident_over_everything_is_not_good() -> None:
    labels = np.zeros(1000, np.int8)
    labels[100:110] = 1
    m = count_events(labels, np.ones(1000, bool), [(0, 999, 0)]).metrics()
    assert m["segment_recall"] == 1 and m["false_per_10k"] == 0
    assert m["normal_inside"] == 1.0  # what gives it away


def test_add_events_runs_both_groupings_and_pools_by_part() -> None:
    labels = np.zeros(300, np.int8)
    labels[200:220] = 1
    flagged = np.zeros(300, bool)
    flagged[[5]] = True  # a stray warning: a gap10 incident, not a tracker incident
    flagged[200:220] = True
    runs = []
    for _ in range(2):
        metrics: dict = {}
        add_events(metrics, labels, flagged, None, [], IncidentSettings())
        runs.append(("smd", metrics))
    assert runs[0][1]["events"]["incidents"]["false_incidents"] == 0
    assert runs[0][1]["events"]["gap10"]["false_incidents"] == 1
    pooled = pool_events(runs)
    assert pooled["smd"]["incidents"]["segments"] == 2 and pooled["smd"]["gap10"]["incidents"] == 4


def test_the_evidence_rule_reads_each_rows_p_value_and_start_skips_it_too() -> None:
    """A labelled stretch of p 1e-2 rows that never alert (threshold 1e-3) is found only when the evidence rule
    is on and the rows' -log10 p-values reach the tracker; gap10 and the peers' decisions (no p-values) stand."""
    labels = np.zeros(300, np.int8)
    labels[200:210] = 1
    flagged = np.zeros(350, bool)
    score = np.full(350, 0.2)
    score[250:260] = 2.0  # rows 200-209 of the labelled part
    on = IncidentSettings(evidence_p_value=0.05, evidence_k=5, evidence_n=10)
    metrics: dict = {}
    add_events(metrics, labels, flagged, None, [], on, start=50, neg_log10_p=score)
    events = metrics["events"]
    assert events["incidents"]["segment_recall"] == 1.0 and events["incidents"]["median_delay"] == 4
    assert events["gap10"]["segment_recall"] == 0.0
    add_events(metrics, labels, flagged, None, [], IncidentSettings(), start=50, neg_log10_p=score)
    assert metrics["events"]["incidents"]["segment_recall"] == 0.0  # off by default
    add_events(metrics, labels, flagged, None, [], on, start=50)
    assert metrics["events"]["incidents"]["segment_recall"] == 0.0  # no p-values: only alerts count


def test_a_critical_row_opens_at_once_and_start_skips_an_unlabelled_prefix() -> None:
    labels = np.zeros(100, np.int8)
    labels[40] = 1
    flagged = np.zeros(150, bool)
    flagged[90] = True  # row 40 of the labelled part
    critical = flagged.copy()
    metrics: dict = {}
    add_events(metrics, labels, flagged, critical, [], IncidentSettings(), start=50)
    assert metrics["events"]["incidents"]["segment_recall"] == 1.0
    add_events(metrics, labels, flagged, None, [], IncidentSettings(), start=50)
    assert metrics["events"]["incidents"]["segment_recall"] == 0.0  # a lone warning is debounced


def test_the_bench_groups_decisions_with_the_daemons_incident_variables(tmp_path, monkeypatch, capsys) -> None:
    """`streammoe bench` reads STREAMMOE_INCIDENTS__* as `score` does, and names a bad one."""
    from benchmarks import tracks
    from streammoe.cli import main

    seen: list[tracks.BenchOptions] = []

    class Seen(Exception):
        """Stops the bench here: only its options are under test."""

    def run_t1(opts: tracks.BenchOptions, observe: object) -> None:
        seen.append(opts)
        raise Seen

    monkeypatch.setattr(tracks, "run_t1", run_t1)
    monkeypatch.setenv("STREAMMOE_INCIDENTS__QUIET_RECORDS", "30")
    args = ["bench", "--tracks", "T1", "--data-root", str(tmp_path), "--out", str(tmp_path / "out"), "--no-plots"]
    with pytest.raises(Seen):
        main(args)
    assert seen[0].incidents == IncidentSettings(quiet_records=30)
    monkeypatch.setenv("STREAMMOE_INCIDENTS__QUIET_RECORD", "30")
    capsys.readouterr()
    assert main(args) == 2  # a misconfiguration, as fit's and score's: one line, exit status 2
    assert capsys.readouterr().err == (
        "streammoe bench: error: STREAMMOE_INCIDENTS__QUIET_RECORD: not a setting "
        "(did you mean STREAMMOE_INCIDENTS__QUIET_RECORDS?)\n"
    )
