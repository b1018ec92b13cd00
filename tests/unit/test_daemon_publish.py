"""Publishing on fake clients: what a judged batch puts on each topic, keyed and traced back to its input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
from clients_kit import FakeMessage, FakeSink, fake_settings, fitted, records

from streammoe.daemon import REF_PARTITION_SHIFT, RunSummary
from streammoe.daemon.pipeline import Judged, Part
from streammoe.daemon.publish import Publisher
from streammoe.metrics import Metrics
from streammoe.model.detector import LearnReport
from streammoe.novelty.events import ModeEvent
from streammoe.wire.records import RecordDecoder


def judged_batch(tmp_path: Path, n_normal: int, n_wild: int, scores: bool):  # type: ignore[no-untyped-def]
    settings = fake_settings(tmp_path, kafka={"scores_topic": "scores" if scores else None})
    rng = np.random.default_rng(4)
    values = records(rng, n_normal) + records(rng, n_wild, start_ts=n_normal, shift=40.0) + [b"[1, 2]"]
    msgs = [FakeMessage("input", 2, 100 + i, v, b"pump-1") for i, v in enumerate(values)]
    decoded = RecordDecoder(settings.records).decode([m.value() for m in msgs])
    detector = fitted()
    rows = np.arange(len(decoded.index))
    scored = detector.score_many(decoded.values[rows], refs=rows.astype(np.int64), timestamps=decoded.ts[rows])
    judged = Judged(parts=[Part("global", scored, rows, "lineage.7", detector.expert_status())])
    sink, summary = FakeSink([]), RunSummary()
    return Publisher(settings, sink, Metrics(), summary), msgs, decoded, judged, sink, summary, scored


def test_alerts_for_anomalies_only_dead_letters_with_their_reason_and_every_record_accounted(tmp_path: Path) -> None:
    publisher, msgs, decoded, judged, sink, summary, scored = judged_batch(tmp_path, 50, 3, scores=False)
    publisher.publish(msgs, decoded, judged)  # type: ignore[arg-type]
    sink.flush()

    alerts = [orjson.loads(a.value or b"") for a in sink.on("alerts")]
    assert len(alerts) == int(scored.is_anomaly.sum()) == summary.alerts >= 3
    assert {a["source"]["offset"] for a in alerts} >= {150, 151, 152}, "the wild readings alert"
    assert all(a["source"]["partition"] == 2 and a["model_version"] == "lineage.7" for a in alerts)
    assert {s.key for s in sink.on("alerts")} == {b"pump-1"}, "alerts are keyed by asset"
    assert sink.on("scores") == []
    [dead] = sink.on("dead")
    headers = dict(dead.headers or [])
    assert dead.value == b"[1, 2]" and headers["reason"] == b"not_object" and headers["source_offset"] == b"153"
    assert summary.alerts + summary.non_alerts + summary.dead_letters == len(msgs)


def test_with_a_scores_topic_every_scored_record_gets_a_score(tmp_path: Path) -> None:
    publisher, msgs, decoded, judged, sink, _, _ = judged_batch(tmp_path, 20, 1, scores=True)
    publisher.publish(msgs, decoded, judged)  # type: ignore[arg-type]
    sink.flush()
    offsets = [orjson.loads(s.value or b"")["source"]["offset"] for s in sink.on("scores")]
    assert offsets == list(range(100, 121))


def test_mode_events_name_the_input_records_they_came_from(tmp_path: Path) -> None:
    publisher, msgs, decoded, judged, sink, _, _ = judged_batch(tmp_path, 5, 0, scores=False)
    event = ModeEvent(
        "mode_added", 1, 64, first_ref=(3 << REF_PARTITION_SHIFT) | 42, last_ref=(3 << REF_PARTITION_SHIFT) | 99
    )
    judged.parts = []
    judged.learned = [("line-1", "lineage.9", LearnReport(learned=5, events=[event]))]
    publisher.publish(msgs, decoded, judged)  # type: ignore[arg-type]
    sink.flush()
    [sent] = sink.on("events")
    payload = orjson.loads(sent.value or b"")
    assert sent.key == b"line-1" and payload["scope"] == "line-1" and payload["model_version"] == "lineage.9"
    assert payload["first_source"] == {"topic": "input", "partition": 3, "offset": 42}
    assert payload["last_source"] == {"topic": "input", "partition": 3, "offset": 99}
