"""Control topic -> operator verdicts on experts, and commands on incidents -> the scopes they concern (between
batches).

The control topic's positions live in the model state beside the input offsets, so a verdict is applied once per
model and re-applied to an older model restored from a checkpoint that predates it. A command that cannot be
applied goes to the dead-letter topic with its reason (`bad_control`), except a command on an unknown incident
sent before the model's lineage began: counted and skipped (daemon/incident_commands.SentBeforeModel).
"""

from __future__ import annotations

import time

from streammoe.daemon.clients import ControlClient, SinkClient, source_of
from streammoe.daemon.incident_commands import IncidentCommands, SentBeforeModel
from streammoe.daemon.pipeline import JudgeThread
from streammoe.daemon.publish import Publisher, input_timestamp, refused
from streammoe.incidents.operator import expert_judged
from streammoe.kafka.control import ControlError, ExpertVerdict, parse_command
from streammoe.logs import get_logger
from streammoe.metrics import Metrics
from streammoe.state.checkpoint import ModelState
from streammoe.state.ownership import OwnedScopes
from streammoe.wire.commands import IncidentCommand
from streammoe.wire.identity import expert_id, parse_expert_id, same_expert

log = get_logger("streammoe.daemon")

CONTROL_RETRY_S = 5.0  # while the control topic does not exist yet, look for it again this often


class Verdicts:
    def __init__(
        self,
        control: ControlClient,
        scopes: OwnedScopes,
        sink: SinkClient,
        publisher: Publisher,
        judge_thread: JudgeThread,
        metrics: Metrics,
    ) -> None:
        self.control, self.scopes, self.sink, self.publisher = control, scopes, sink, publisher
        self.judge_thread, self.metrics = judge_thread, metrics
        self._retry_at = 0.0
        self.incident_commands = IncidentCommands(publisher.incidents, self._mark_only)

    def _mark_only(self, state: ModelState, verdict: ExpertVerdict, control_source: dict) -> None:
        self._apply_verdict(state, verdict, control_source["partition"], control_source["offset"], link=False)

    def apply(self) -> None:
        """Apply the verdicts that arrived since the last call to the models this worker holds."""
        topic = self.control.topic
        if not self.control.assigned:
            if time.monotonic() < self._retry_at:
                return
            self._retry_at = time.monotonic() + CONTROL_RETRY_S
            if not self.control.start(self.positions()):
                return
        msgs = self.control.poll()
        if msgs:
            self.judge_thread.require_idle("applying operator verdicts")
        early: list[tuple[str, int, int]] = []  # (scope, partition, offset) of the skipped SentBeforeModel
        for m in msgs:
            _, partition, offset = source_of(m)
            held = [s for s in self.scopes.models.values() if not s.already_learned(topic, partition, offset)]
            if not held:
                continue
            try:
                cmd = parse_command(m.value(), input_timestamp(m), self.publisher.channels)
                state = next((s for s in held if s.scope == cmd.scope), None)
                if state is not None and isinstance(cmd, IncidentCommand):
                    at = {"topic": topic, "partition": partition, "offset": offset}
                    self.incident_commands.apply(state, cmd, at, input_timestamp(m))
                elif state is not None and isinstance(cmd, ExpertVerdict):
                    check_fresh(state, cmd, input_timestamp(m))
                    self._apply_verdict(state, cmd, partition, offset)
            except ControlError as e:
                self.sink.dead_letter(refused(m, "bad_control", str(e)))
                self.metrics.dead_letters.labels("bad_control").inc()
                log.warning("control_rejected", reason=str(e), partition=partition, offset=offset)
            except SentBeforeModel:
                self.metrics.control_skipped.labels("before_model").inc()
                early.append((cmd.scope, partition, offset))
            for s in held:
                s.advance(topic, partition, offset + 1)
        if early:
            log.info(
                "control_skipped_before_model",
                commands=len(early),
                scopes=sorted({s for s, _, _ in early}),
                first={"partition": early[0][1], "offset": early[0][2]},
                last={"partition": early[-1][1], "offset": early[-1][2]},
                why="commands on incidents of an earlier model, sent before this model's lineage began",
            )

    def _apply_verdict(
        self, state: ModelState, verdict: ExpertVerdict, partition: int, offset: int, link: bool = True
    ) -> None:
        """Mark the expert; with `link`, also close or reclassify the incident linked to its `mode_added` event."""
        if state.detector is None:
            raise ControlError("the scope has no model yet (warming up)")
        if verdict.expert_id is not None:
            check_identity(state, verdict.expert_id)
        try:
            state.detector.mark_expert(verdict.expert, verdict.status)
        except ValueError as e:
            raise ControlError(str(e)) from None
        self.publisher.send_event(
            marked_event(verdict, self.control.topic, partition, offset), state.scope, state.version
        )
        self.metrics.mode_events.labels("mode_marked").inc()
        incidents = self.publisher.incidents
        if link and incidents is not None and incidents.incidents.enabled:
            by = {
                "operator": verdict.operator,
                "note": verdict.note,
                "control_source": source(self.control.topic, partition, offset),
            }
            # A verdict naming only a slot means the expert in it now, never an older one whose incident the
            # tracker still remembers in that slot.
            named = verdict.expert_id or expert_id(
                state.lineage, verdict.expert, int(state.detector.model.born[verdict.expert])
            )
            incidents.act(state.scope, lambda t: expert_judged(t, verdict.expert, named, verdict.status, by))
        log.info(
            "expert_marked", scope=state.scope, expert=verdict.expert, status=verdict.status, operator=verdict.operator
        )

    def positions(self) -> dict[int, int]:
        """Where to start reading the control topic: the earliest position any held scope has not yet seen."""
        start: dict[int, int] = {}
        held = list(self.scopes.models.values())
        for state in held:
            for p, o in state.learned_offsets.get(self.control.topic, {}).items():
                start[p] = min(o, start.get(p, o))
        return {p: o for p, o in start.items() if all(p in s.learned_offsets.get(self.control.topic, {}) for s in held)}


def check_fresh(state: ModelState, verdict: ExpertVerdict, sent_ms: int | None) -> None:
    """Refuse a command that names only a slot and was sent before this model's lineage began: a fresh model (a
    bootstrap directory, a warm-up) reads the control topic from its beginning, and the slot now holds an expert
    that command never meant. Without a timestamp on the message, or a birth time (a checkpoint of before it was
    kept), it applies as it always did."""
    if verdict.expert_id is not None or not state.predates(sent_ms):
        return
    raise ControlError(
        f"a command naming only slot {verdict.expert} was sent at {sent_ms} (epoch ms), before scope "
        f"{state.scope}'s model (lineage {state.lineage}) began at {state.born_ms}: it was meant for an earlier "
        "model; name the expert by expert_id (as in alerts and events)"
    )


def check_identity(state: ModelState, named: str) -> None:
    """Refuse a verdict on an expert this scope's model does not hold: another lineage (the model started afresh,
    from a bootstrap directory or a warm-up, or is another deployment's), or a slot that now holds another expert."""
    assert state.detector is not None
    lineage, slot, born = parse_expert_id(named)
    if lineage != state.lineage:
        raise ControlError(
            f"expert {named} belongs to model lineage {lineage}; scope {state.scope}'s model is "
            f"lineage {state.lineage} (verdicts on an earlier model do not carry over)"
        )
    model = state.detector.model
    if slot >= len(model.born) or not bool(model.active[slot]):
        raise ControlError(f"expert {named} is no longer in the model: slot {slot} is empty")
    now = int(model.born[slot])
    if not same_expert(born, now):
        raise ControlError(
            f"expert {named} is no longer in the model: slot {slot} now holds {expert_id(lineage, slot, now)}"
        )


def marked_event(verdict: ExpertVerdict, topic: str, partition: int, offset: int) -> dict:
    """The `mode_marked` event for an applied operator verdict, before `event_payload`."""
    event = {
        "kind": "mode_marked",
        "expert": verdict.expert,
        "status": verdict.status,
        "operator": verdict.operator,
        "note": verdict.note,
        "control_source": source(topic, partition, offset),
    }
    if verdict.expert_id is not None:
        event["expert_id"] = verdict.expert_id
    return event


def source(topic: str, partition: int, offset: int) -> dict:
    return {"topic": topic, "partition": partition, "offset": offset}
