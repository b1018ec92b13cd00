"""Operator feedback: verdicts on experts, and commands on incidents (wire/commands.py), on the control topic.

A command is a JSON object, keyed by scope on the topic::

    {"scope": "global", "expert_id": "3f9c2a1e:3:51200", "status": "fault", "operator": "alice"}

`expert_id` (from the alert or mode event the operator looked at) names one expert of one model: the verdict is
refused when that scope's model is of another lineage or the slot now holds another expert. The older form,
`"expert": 3` (a slot), still works but follows the slot; a model that began after such a command was sent
refuses it (daemon/verdicts.check_fresh), as a fresh model reads the topic from its beginning.

`status` is `fault` (every record assigned to the expert alerts, reason `fault_mode`), `confirmed` (an operator
accepted the mode) or `learned` (back to the default). Every worker reads every partition of the control topic
(no consumer group: a verdict concerns whoever owns the scope) from the position stored in that scope's
checkpoint, so a command is applied once per model and survives restarts with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from streammoe.config import KafkaSettings, consumer_config
from streammoe.kafka.source import usable
from streammoe.logs import get_logger
from streammoe.wire.commands import IncidentCommand, parse_incident_command
from streammoe.wire.identity import parse_expert_id

log = get_logger("streammoe.kafka.control")

STATUSES = ("fault", "confirmed", "learned")


class ControlError(ValueError):
    """A control message that cannot be applied; the message says why (it becomes the dead-letter reason)."""


@dataclass(frozen=True)
class ExpertVerdict:
    scope: str
    expert: int
    status: str
    operator: str | None = None
    note: str | None = None
    expert_id: str | None = None  # `<lineage>:<slot>:<born>`: applied only to that very expert (wire/identity.py)


def parse_command(
    value: bytes | None, sent_ms: int | None = None, channels: list[str] | None = None
) -> ExpertVerdict | IncidentCommand:
    """A verdict on an expert, or (with a `command` field) a command on incidents (wire/commands.py); `sent_ms`
    is the message's Kafka timestamp, from which a mute's `for_s` counts."""
    try:
        obj = orjson.loads(value or b"")
    except orjson.JSONDecodeError as e:
        raise ControlError(f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ControlError("a control command is a JSON object")
    if "command" in obj:
        try:
            return parse_incident_command(obj, sent_ms, channels)
        except ValueError as e:
            raise ControlError(str(e)) from None
    scope, expert, status = obj.get("scope", "global"), obj.get("expert"), obj.get("status")
    named = obj.get("expert_id")
    if not isinstance(scope, str) or not scope:
        raise ControlError("'scope' must be a non-empty string")
    if "expert_id" in obj:
        if not isinstance(named, str):
            raise ControlError("'expert_id' must be a string '<lineage>:<slot>:<born>' (as in alerts and events)")
        try:
            _, slot, _ = parse_expert_id(named)
        except ValueError as e:
            raise ControlError(str(e)) from None
        if "expert" in obj and expert != slot:
            raise ControlError(f"'expert' {expert!r} and 'expert_id' {named!r} name different slots")
        expert = obj.get("expert", slot)
    if not isinstance(expert, int) or isinstance(expert, bool) or expert < 0:
        raise ControlError(
            "'expert_id' (as in alerts and events), or 'expert', a non-negative integer slot, is required"
        )
    if status not in STATUSES:
        raise ControlError(f"'status' must be one of {', '.join(STATUSES)}")
    operator, note = obj.get("operator"), obj.get("note")
    return ExpertVerdict(
        scope,
        expert,
        status,
        operator if isinstance(operator, str) else None,
        note if isinstance(note, str) else None,
        named,
    )


class ControlListener:
    """Reads the control topic without a consumer group, from positions the caller keeps."""

    def __init__(self, kafka: KafkaSettings, on_error: Callable[[KafkaError], None] | None = None) -> None:
        self.topic = kafka.control_topic
        conf = consumer_config(kafka)
        conf.update({"group.id": f"{kafka.group_id}.control", "enable.partition.eof": False})
        if on_error is not None:
            conf["error_cb"] = on_error
        self.consumer = Consumer(conf)
        self.assigned = False
        self._said_missing = False

    def start(self, positions: dict[int, int]) -> bool:
        """Assign every partition of the control topic at `positions` (next offset per partition; else the
        beginning). False while the topic does not exist yet: the caller tries again later."""
        try:
            meta = self.consumer.list_topics(self.topic, timeout=2.0).topics.get(self.topic)
        except KafkaException as e:  # a broker hiccup at start-up must not stop the daemon
            log.warning("control_topic_unavailable", topic=self.topic, error=str(e))
            return False
        if meta is None or meta.error is not None or not meta.partitions:
            if not self._said_missing:  # once: the caller asks again every few seconds
                log.warning(
                    "control_topic_missing",
                    topic=self.topic,
                    setting="STREAMMOE_KAFKA__CONTROL_TOPIC",
                    error=str(meta.error) if meta is not None and meta.error is not None else None,
                    consequence="operator verdicts are not read until it exists (checked every few seconds)",
                )
                self._said_missing = True
            return False
        self.consumer.assign(
            [TopicPartition(self.topic, p, positions.get(p, OFFSET_BEGINNING)) for p in sorted(meta.partitions)]
        )
        self.assigned = True
        log.info("control_topic_assigned", topic=self.topic, partitions=len(meta.partitions))
        return True

    def rewind(self, positions: dict[int, int]) -> None:
        """Read again from `positions` (else the beginning) where the listener is further on: a scope taken over from
        another worker has not seen the verdicts since its snapshot. Scopes that have seen them skip them."""
        if not self.assigned:
            return
        for tp in self.consumer.position(self.consumer.assignment()):
            want = positions.get(tp.partition, 0)
            if tp.offset < 0 or want < tp.offset:
                target = positions.get(tp.partition, OFFSET_BEGINNING)
                try:
                    self.consumer.seek(TopicPartition(self.topic, tp.partition, target))
                except KafkaException as e:  # not fetching yet: it starts where `start` put it, which is earlier
                    log.debug("control_rewind_skipped", partition=tp.partition, error=str(e))

    def poll(self, max_messages: int = 100) -> list[Message]:
        if not self.assigned:
            return []
        return usable(self.consumer.consume(num_messages=max_messages, timeout=0), "control_consume_error")

    def close(self) -> None:
        self.consumer.close()
