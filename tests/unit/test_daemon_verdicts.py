"""Operator verdicts on fake clients: applied once per model, refused ones dead-lettered with their reason."""

from __future__ import annotations

from pathlib import Path

import orjson
from clients_kit import fitted, make

from streammoe.state.checkpoint import ModelState


def command(**fields: object) -> bytes:
    return orjson.dumps({"scope": "global", "expert": 0, "status": "fault", "operator": "alice", **fields})


def test_a_verdict_marks_the_expert_once_and_says_so_on_the_events_topic(tmp_path: Path) -> None:
    daemon, clients = make(tmp_path)
    daemon.state.detector = fitted()
    control, sink = clients.control_client, clients.sink_client
    control.feed(command(note="cavitation"))
    daemon.verdicts.apply()
    sink.flush()

    assert daemon.state.detector.expert_status()[0] == "fault"
    [event] = [orjson.loads(e.value or b"") for e in sink.on("events")]
    assert event["kind"] == "mode_marked" and event["operator"] == "alice" and event["note"] == "cavitation"
    assert event["control_source"] == {"topic": "control", "partition": 0, "offset": 0}
    assert daemon.state.learned_offsets["control"] == {0: 1}

    control.position = 0  # read again (a rewind): a model that has seen it does not apply it twice
    daemon.state.detector.mark_expert(0, "learned")
    daemon.verdicts.apply()
    sink.flush()
    assert daemon.state.detector.expert_status()[0] == "learned" and len(sink.on("events")) == 1


def test_refused_commands_go_to_the_dead_letter_topic_with_their_reason(tmp_path: Path) -> None:
    daemon, clients = make(tmp_path)
    control, sink = clients.control_client, clients.sink_client
    control.feed(b"{not json")
    control.feed(command())  # the scope is still warming up
    daemon.verdicts.apply()
    daemon.state.detector = fitted()
    control.feed(command(expert=7))  # not an active expert
    control.feed(command(scope="elsewhere"))  # a scope this worker does not hold: not ours, not an error
    daemon.verdicts.apply()
    sink.flush()

    details = [dict(d.headers or []) for d in sink.on("dead")]
    assert [d["reason"] for d in details] == [b"bad_control"] * 3
    assert b"not JSON" in details[0]["detail"] and b"warming up" in details[1]["detail"]
    assert b"not active" in details[2]["detail"]
    assert daemon.state.learned_offsets["control"] == {0: 4}, "every command is passed, applied or not"


def test_the_control_topic_is_read_from_the_earliest_position_a_held_scope_has_not_seen(tmp_path: Path) -> None:
    daemon, _ = make(tmp_path)
    daemon.scopes.models.clear()
    a, b = ModelState("a", None), ModelState("b", None)
    a.advance("control", 0, 5)
    a.advance("control", 1, 9)
    b.advance("control", 0, 3)  # b has never read partition 1: it starts from the beginning there
    daemon.scopes.models.update({"a": a, "b": b})
    assert daemon.verdicts.positions() == {0: 3}
