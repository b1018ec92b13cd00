"""The topics named at start when the cluster lacks them: every one the daemon reads or writes."""

from __future__ import annotations

from streammoe.config import KafkaSettings
from streammoe.kafka.topics import configured_topics


def test_the_incidents_topic_is_checked_when_incidents_are_on() -> None:
    kafka = KafkaSettings(scores_topic="s")
    roles = {t.role: (t.name, t.setting) for t in configured_topics(kafka, "snaps", incidents_topic="inc")}
    assert roles["incidents"] == ("inc", "STREAMMOE_INCIDENTS__TOPIC")
    assert {"input", "alerts", "dead letters", "events", "control", "scores", "snapshot"} <= set(roles)
    assert "incidents" not in {t.role for t in configured_topics(kafka)}
