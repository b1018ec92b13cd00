"""Operator commands on incidents (wire/commands.py), applied between batches to the scope they name.

Acknowledgements and mutes change only the scope's incident state; a verdict on an incident also changes its
model (model/teaching.py): `normal` teaches it the incident's records it still remembers and closes the
incident, `fault` keeps them out of learning for good; on a `new_mode` incident it also marks the expert
(`confirmed` or `fault`), as a verdict on that expert would. What cannot be applied raises ControlError, which
the caller dead-letters as `bad_control`; a command on an unknown incident sent before the model's lineage began
raises SentBeforeModel instead, which the caller counts and skips (see its docstring).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from streammoe.daemon.incidents import IncidentPublisher
from streammoe.daemon.pipeline import REF_PARTITION_SHIFT
from streammoe.incidents.incident import Incident
from streammoe.incidents.mutes import Mute
from streammoe.incidents.operator import UnknownIncident, acknowledge, judge, known, mute, unmute
from streammoe.incidents.tracker import Change, IncidentTracker
from streammoe.kafka.control import ControlError, ExpertVerdict
from streammoe.logs import get_logger
from streammoe.model.teaching import forget, teach
from streammoe.state.checkpoint import ModelState
from streammoe.wire.commands import IncidentCommand

log = get_logger("streammoe.daemon")

MarkExpert = Callable[[ModelState, ExpertVerdict, dict[str, Any]], None]  # Verdicts: without the incident link


class SentBeforeModel(Exception):
    """A command on an incident this model does not know, sent before the model's lineage began (`born_ms`).

    A fresh model (a bootstrap directory, a warm-up) reads the control topic from its beginning; every acknowledge
    or verdict there names an incident of an earlier model. Dead-lettering each would flood the dead-letter topic
    after every fresh start, so they are skipped, counted (`streammoe_control_skipped_total{reason="before_model"}`)
    and summed up in one log line per poll. An unknown incident in a command sent after the birth is `bad_control`.
    """


class IncidentCommands:
    def __init__(self, incidents: IncidentPublisher | None, mark_expert: MarkExpert) -> None:
        self.incidents, self.mark_expert = incidents, mark_expert

    def apply(
        self, state: ModelState, cmd: IncidentCommand, control_source: dict[str, Any], sent_ms: int | None = None
    ) -> None:
        """Apply `cmd`, sent at `sent_ms` (its Kafka timestamp, epoch ms; None: unknown)."""
        publisher = self.incidents
        if publisher is None or not publisher.incidents.enabled:
            raise ControlError("incidents are off (STREAMMOE_INCIDENTS__ENABLED=false): nothing to apply it to")
        by = cmd.by(control_source)
        early = state.predates(sent_ms)
        if cmd.command == "verdict":
            publisher.act(state.scope, lambda t: self._verdict(state, t, cmd, by, early))
        elif cmd.command == "acknowledge":
            publisher.act(state.scope, lambda t: _known(acknowledge, t, str(cmd.incident_id), early, by))
        elif cmd.command == "mute":
            assert cmd.asset is not None and cmd.until is not None  # parse_incident_command sets both for a mute
            muting = Mute(cmd.asset, cmd.channel, cmd.until, by)  # built here, where mypy sees them narrowed
            publisher.act(state.scope, lambda t: mute(t, muting))
        else:
            publisher.act(state.scope, lambda t: unmute(t, str(cmd.asset), cmd.channel))
        log.info("incident_command", scope=state.scope, command=cmd.command, operator=cmd.operator)

    def _verdict(
        self, state: ModelState, tracker: IncidentTracker, cmd: IncidentCommand, by: dict[str, Any], early: bool
    ) -> list[Change]:
        inc = _known(known, tracker, str(cmd.incident_id), early)
        if state.detector is None:
            raise ControlError("the scope has no model yet (warming up)")
        event = inc.mode_event if inc.kind == "new_mode" else None
        if event is not None:  # its records are an expert now: judge that one
            status = "confirmed" if cmd.verdict == "normal" else "fault"
            expert, named = int(event["expert"]), event.get("expert_id")
            self.mark_expert(
                state, ExpertVerdict(state.scope, expert, status, cmd.operator, cmd.note, named), by["control_source"]
            )
            if status == "fault":  # as a verdict on the expert does (incidents/operator.expert_judged)
                inc.kind = "anomaly"
        refs = [(p << REF_PARTITION_SHIFT) | o for p, o in inc.records_at]
        taught = teach(state.detector, refs) if cmd.verdict == "normal" else forget(state.detector, refs)
        verdict = {
            "verdict": cmd.verdict,
            **by,
            "learned": taught.learned,
            "forgotten": taught.records if cmd.verdict == "fault" else 0,
            "via": "incident",
            "detail": None if event is not None else _detail(inc, taught.records, str(cmd.verdict)),
        }
        return judge(tracker, inc, verdict)


def _known(act: Callable[..., Any], tracker: IncidentTracker, incident_id: str, early: bool, *args: Any) -> Any:
    """`act` on the incident; unknown, it is SentBeforeModel when the command is `early` (older than the model)."""
    try:
        return act(tracker, incident_id, *args)
    except UnknownIncident as e:
        raise (SentBeforeModel if early else ControlError)(str(e)) from None


def _detail(inc: Incident, remembered: int, verdict: str) -> str | None:
    """Say when the records are gone: the model keeps only its latest unexplained records. (Not asked for a
    `new_mode` incident: its records left the memory because they became the expert the verdict marks.)"""
    if remembered >= min(inc.count, len(inc.records_at)):
        return None
    what = "learned" if verdict == "normal" else "kept out of learning"
    return (
        f"{remembered} of its {inc.count} anomalous records were still in the model's memory and were {what}; "
        "the others are no longer kept (novelty.memory_size), so the same pattern may alarm again"
    )
