"""The events topic and the control topic have schemas; events built by the real code paths match them.

Mode events come from the novelty functions themselves on a tiny untrained mixture (no fitting, so this is
cheap), go through the daemon's `event_payload` and through JSON as on the wire. Control commands: whatever
`parse_command` accepts validates against control.schema.json, and what it refuses the schema refuses too
(except a float-typed integer for `expert`, which JSON Schema cannot tell from an integer).
"""

from __future__ import annotations

import copy
import re

import jsonschema
import orjson
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streammoe.daemon import REF_PARTITION_SHIFT, event_payload, marked_event
from streammoe.kafka.control import STATUSES, ControlError, parse_command
from streammoe.model.config import ModelConfig, NoveltyConfig
from streammoe.model.learning import ExpertLearner
from streammoe.model.mixture import MixtureOfVAEs
from streammoe.novelty.events import ModeEvent
from streammoe.novelty.growth import try_grow
from streammoe.novelty.lifecycle import merge_duplicates, retire_idle
from streammoe.state.checkpoint import ModelState
from streammoe.state.scopes import GLOBAL_SCOPE
from streammoe.wire.alerts import control_schema, event_schema
from streammoe.wire.incidents import incident_schema

INPUT = "sensor-records"
EVENTS = jsonschema.Draft202012Validator(event_schema())
CONTROL = jsonschema.Draft202012Validator(control_schema())
INCIDENTS = jsonschema.Draft202012Validator(incident_schema())


def on_the_wire(event: dict) -> dict:
    """What a consumer of the events topic reads: the daemon's payload, through orjson."""
    state = ModelState(GLOBAL_SCOPE, None)
    payload = event_payload(event, input_topic=INPUT, scope=state.scope, model_version=state.version)
    return orjson.loads(orjson.dumps(payload))


@pytest.fixture(scope="module")
def mode_events() -> dict[str, dict]:
    """One real event of each kind from the novelty code: retire, merge, then grow into the freed slot. The global
    RNG is seeded too: it draws the experts' initial weights, and whichever tests ran before would move it."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    novelty = NoveltyConfig(
        min_records=16,
        window=32,
        memory_size=32,
        min_rate=0.0,
        candidate_steps=20,
        min_gain=0.0,
        min_explained=0.01,
        retire_weight=0.1,
        retire_after=10,
        merge_margin=5.0,
    )
    model = MixtureOfVAEs(4, ModelConfig(k_max=4, hidden=8, latent=2, n_samples=2, novelty=novelty))
    model.experts.active[:3] = True
    model.weights.gamma[:3] = torch.tensor([100.0, 50.0, 0.1], dtype=model.weights.gamma.dtype)
    with torch.no_grad():  # expert 1 a copy of expert 0, both with the same replay records: duplicates
        for p in model.experts.parameters():
            if p.dim() and p.shape[0] == 4:
                p[1].copy_(p[0])
    x = torch.randn(32, 4, generator=g)
    for k in (0, 1):
        model.replay.add(torch.full((32,), k, dtype=torch.long), x, g)
    out = {}
    (retired,) = retire_idle(model, model.below_floor, 20)
    (merged,) = merge_duplicates(model, g)
    # A far-off sustained run in the short-term memory: refs pack partition 2, offsets 100..139.
    run = torch.randn(40, 4, generator=g) * 0.1 + 20.0
    refs = (2 << REF_PARTITION_SHIFT) + 100 + torch.arange(40, dtype=torch.long)
    model.memory.observe(run, torch.ones(40, dtype=torch.bool), refs, 1_700_000_000_000 + torch.arange(40))
    grown, verdict = try_grow(model, model.memory, ExpertLearner(model, g), g)
    assert verdict is not None and verdict.accepted, verdict
    added = [e for e in grown if e.kind == "mode_added"]
    for e in (retired, merged, added[0]):
        out[e.kind] = on_the_wire(e.as_dict())
    return out


def test_schemas_are_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(event_schema())
    jsonschema.Draft202012Validator.check_schema(control_schema())


def test_each_mode_event_from_the_novelty_code_validates(mode_events: dict[str, dict]) -> None:
    assert set(mode_events) == {"mode_added", "mode_retired", "mode_merged"}
    for event in mode_events.values():
        EVENTS.validate(event)
    added = mode_events["mode_added"]
    assert added["first_source"]["topic"] == INPUT and added["first_source"]["partition"] == 2
    assert 100 <= added["first_source"]["offset"] <= added["last_source"]["offset"] == 139
    assert added["scope"] == "global" and added["model_version"].endswith(".0")
    assert mode_events["mode_merged"]["into"] != mode_events["mode_merged"]["expert"]


def test_events_shaped_like_the_other_novelty_call_sites_validate() -> None:
    # growth.py retires the lightest expert to make room at capacity; a merge margin may not be finite.
    replaced = ModeEvent("mode_retired", 3, 0, detail={"weight": 0.01, "replaced": 1.0})
    nan_margin = ModeEvent("mode_merged", 2, 16, into=0, detail={"margin": float("nan")})
    for e in (replaced, nan_margin):
        EVENTS.validate(on_the_wire(e.as_dict()))


def test_mode_marked_event_from_a_parsed_command_validates() -> None:
    for cmd in (
        b'{"expert": 3, "status": "fault", "operator": "alice", "note": "cavitation"}',
        b'{"scope": "global", "expert": 0, "status": "learned", "operator": 7}',
    ):
        event = on_the_wire(marked_event(parse_command(cmd), "streammoe-control", 0, 41))
        EVENTS.validate(event)
        assert event["control_source"] == {"topic": "streammoe-control", "partition": 0, "offset": 41}


@pytest.mark.parametrize(
    "breakage",
    [
        lambda e: e.pop("kind"),
        lambda e: e.update(kind="mode_exploded"),
        lambda e: e.update(kind=None),
        lambda e: e.pop("scope"),
        lambda e: e.pop("model_version"),
        lambda e: e.pop("first_source"),
        lambda e: e.update(first_source=None),
        lambda e: e.update(expert=-1),
        lambda e: e.update(expert=True),
        lambda e: e.update(into=1),
        lambda e: e.update(unexpected=1),
        lambda e: e["detail"].pop("gain"),
        lambda e: e["last_source"].pop("offset"),
        lambda e: e.update(kind="mode_marked"),  # a mode_added body is no mode_marked event
    ],
)
def test_broken_events_are_rejected(mode_events: dict[str, dict], breakage) -> None:  # type: ignore[no-untyped-def]
    event = copy.deepcopy(mode_events["mode_added"])
    breakage(event)
    assert not EVENTS.is_valid(event)


def test_retired_and_merged_events_carry_no_sources(mode_events: dict[str, dict]) -> None:
    for kind in ("mode_retired", "mode_merged"):
        event = copy.deepcopy(mode_events[kind])
        event["first_source"] = {"topic": INPUT, "partition": 0, "offset": 1}
        assert not EVENTS.is_valid(event)
    merged = copy.deepcopy(mode_events["mode_merged"])
    merged["into"] = None
    assert not EVENTS.is_valid(merged)


# ---- control commands ---------------------------------------------------------------------------------------


def accepted(value: bytes) -> bool:
    try:
        parse_command(value)
    except ControlError:
        return False
    return True


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-3, 10),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
    st.sampled_from(["", "global", *STATUSES]),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=2), st.dictionaries(st.text(max_size=3), SCALARS, max_size=2))
COMMANDS = st.fixed_dictionaries(
    {},
    optional={
        "scope": VALUES,
        "expert": VALUES,
        "status": VALUES,
        "operator": VALUES,
        "note": VALUES,
        "extra": VALUES,
        "expert_id": st.one_of(VALUES, st.sampled_from(["3f9c2a1e:3:fit", "3f9c2a1e:0:51200", "x:1:2:3", "a:b:c"])),
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(COMMANDS, VALUES))
def test_schema_accepts_exactly_what_parse_command_accepts(obj: object) -> None:
    value = orjson.dumps(obj)
    if accepted(value):
        assert CONTROL.is_valid(obj), obj
    elif not (isinstance(obj, dict) and isinstance(obj.get("expert"), float) and obj["expert"].is_integer()) and not (
        isinstance(obj, dict) and isinstance(obj.get("expert"), int) and "expert_id" in obj
    ):
        # 3.0 is an integer to JSON Schema, not to parse_command; nor can the schema tell that an expert_id and an
        # expert name different slots
        assert not CONTROL.is_valid(obj), obj


@pytest.mark.parametrize(
    "cmd,ok",
    [
        ({"scope": "global", "expert": 3, "status": "fault", "operator": "alice", "note": "cavitation"}, True),
        ({"expert": 0, "status": "confirmed"}, True),
        ({"expert_id": "3f9c2a1e:3:fit", "status": "fault"}, True),
        ({"expert_id": "3f9c2a1e:3:51200", "expert": 3, "status": "fault"}, True),
        ({"expert_id": "3f9c2a1e:3", "status": "fault"}, False),
        ({"expert_id": None, "expert": 1, "status": "fault"}, False),
        ({"expert": 2, "status": "learned", "operator": None, "ticket": "OPS-12"}, True),
        ({"expert": "three", "status": "fault"}, False),
        ({"expert": True, "status": "fault"}, False),
        ({"expert": -1, "status": "fault"}, False),
        ({"status": "fault"}, False),
        ({"expert": 1}, False),
        ({"expert": 1, "status": "broken"}, False),
        ({"expert": 1, "status": "fault", "scope": ""}, False),
        ({"expert": 1, "status": "fault", "scope": None}, False),
        ([{"expert": 1, "status": "fault"}], False),
    ],
)
def test_documented_commands(cmd: object, ok: bool) -> None:
    assert accepted(orjson.dumps(cmd)) is ok
    assert CONTROL.is_valid(cmd) is ok


def test_an_expert_id_and_a_slot_that_disagree_are_refused() -> None:
    """The one refusal the schema cannot express."""
    with pytest.raises(ControlError, match="name different slots"):
        parse_command(b'{"expert_id": "3f9c2a1e:3:51200", "expert": 2, "status": "fault"}')


def test_the_examples_in_the_docs_match_the_schemas() -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "alerts.md").read_text()
    blocks = [orjson.loads(line) for b in re.findall(r"```json\n(.*?)```", doc, re.DOTALL) for line in b.splitlines()]
    incidents = [b for b in blocks if "incident_id" in b and "command" not in b]
    events = [b for b in blocks if "kind" in b and "incident_id" not in b]
    commands = [b for b in blocks if ("status" in b and "kind" not in b) or "command" in b]
    assert {c["command"] for c in commands if "command" in c} == {"acknowledge", "mute", "unmute", "verdict"}
    assert {e["kind"] for e in events} == {
        "mode_added",
        "mode_retired",
        "mode_merged",
        "mode_marked",
        "likelihood_drift",
        "asset_silent",
    }
    for e in events:
        EVENTS.validate(e)
    assert incidents
    for i in incidents:
        INCIDENTS.validate(i)
    assert commands
    for c in commands:
        CONTROL.validate(c)
        parse_command(orjson.dumps(c), sent_ms=1_732_000_000_000)  # a mute's for_s counts from the message's timestamp
