"""The topics a daemon is configured with, and a clear log line for each one the cluster does not have.

A missing input topic means nothing is consumed; a missing control topic means verdicts are not read until it
exists; a missing output topic is created by the broker on first write if it allows that
(`auto.create.topics.enable`), else every output to it fails and the batch waits. None of this stops the daemon
(a topic may be created after it starts), so each is said once, at start, with what it means.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import KafkaException, Producer

from streammoe.config import KafkaSettings
from streammoe.logs import get_logger

log = get_logger("streammoe.kafka.topics")

CONSEQUENCE = {
    "input": "nothing is consumed until it exists",
    "control": "operator verdicts are not read until it exists (checked every few seconds)",
    "snapshot": "scopes cannot be handed over between workers until it exists",
}
OUTPUT = "created by the broker on first write if auto.create.topics.enable allows, else its outputs wait"


@dataclass(frozen=True)
class ConfiguredTopic:
    role: str
    name: str
    setting: str


def configured_topics(
    kafka: KafkaSettings, snapshot_topic: str | None = None, incidents_topic: str | None = None
) -> list[ConfiguredTopic]:
    """Every topic the daemon reads or writes (`incidents_topic`: None when incidents are off)."""
    topics = [
        ConfiguredTopic("input", kafka.input_topic, "STREAMMOE_KAFKA__INPUT_TOPIC"),
        ConfiguredTopic("alerts", kafka.alerts_topic, "STREAMMOE_KAFKA__ALERTS_TOPIC"),
        ConfiguredTopic("dead letters", kafka.dead_letter_topic, "STREAMMOE_KAFKA__DEAD_LETTER_TOPIC"),
        ConfiguredTopic("events", kafka.events_topic, "STREAMMOE_KAFKA__EVENTS_TOPIC"),
        ConfiguredTopic("control", kafka.control_topic, "STREAMMOE_KAFKA__CONTROL_TOPIC"),
    ]
    if kafka.scores_topic:
        topics.append(ConfiguredTopic("scores", kafka.scores_topic, "STREAMMOE_KAFKA__SCORES_TOPIC"))
    if incidents_topic:
        topics.append(ConfiguredTopic("incidents", incidents_topic, "STREAMMOE_INCIDENTS__TOPIC"))
    if snapshot_topic:
        topics.append(ConfiguredTopic("snapshot", snapshot_topic, "STREAMMOE_SNAPSHOT__TOPIC"))
    return topics


def report_missing(producer: Producer, topics: list[ConfiguredTopic], timeout: float = 5.0) -> list[ConfiguredTopic]:
    """Log `topic_missing` (a warning) for each of `topics` (configured_topics) the cluster does not list; returns
    them.

    Asks for the cluster's whole topic list, not for the topics by name: a metadata request naming a topic
    makes a broker with auto-creation create it (Tansu does)."""
    try:
        existing = set(producer.list_topics(timeout=timeout).topics)
    except KafkaException as e:
        log.warning("topics_unchecked", error=str(e), hint="the broker did not answer; topics are not checked")
        return []
    missing = [t for t in topics if t.name not in existing]
    for t in missing:
        log.warning(
            "topic_missing",
            topic=t.name,
            role=t.role,
            setting=t.setting,
            consequence=CONSEQUENCE.get(t.role, OUTPUT),
            hint="docs/operations.md, 'Topics'",
        )
    return missing
