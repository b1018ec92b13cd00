"""Every message the tracker produces validates against incident.schema.json, and the schema refuses bad ones."""

from __future__ import annotations

import math

import jsonschema
import numpy as np
import pytest

from streammoe.incidents import IncidentTracker, Source
from streammoe.wire.incidents import build_incident, incident_key, incident_schema
from tests.unit.test_incidents import CHANNELS, batch, settings

VALIDATOR = jsonschema.Draft202012Validator(incident_schema())


def messages() -> list[dict]:
    t = IncidentTracker("global", settings(stale_after_s=1), CHANNELS)
    share = np.full((30, 3), 1 / 3, np.float32)
    flags = [1] * 20 + [0] * 10
    b = batch(flags, critical=[0] * 19 + [1] + [0] * 10, share=share)
    b.score = np.where(np.arange(30) == 3, math.inf, b.score)
    out = t.observe(b, now=0.0)
    out += t.observe(batch([1] * 5, start=30), now=0.0)
    out += t.link_mode_added(1, Source("in", 0, 30), Source("in", 0, 34), {"gain": 2.5, "explained": 0.9})
    out += t.expire(10.0)
    return [build_incident(c) for c in out]


def test_every_message_validates() -> None:
    msgs = messages()
    assert [m["status"] for m in msgs] == ["opened", "resolved", "opened", "updated", "resolved"]
    for m in msgs:
        VALIDATOR.validate(m)
    assert msgs[0]["peak_score"] is None  # a record without a finite likelihood
    assert msgs[3]["kind"] == "new_mode" and msgs[4]["resolution"]["by"] == "stale"


def test_the_schema_is_a_valid_schema_and_refuses_inconsistent_messages() -> None:
    jsonschema.Draft202012Validator.check_schema(incident_schema())
    good = messages()[1]
    for bad in (
        {**good, "resolution": None},
        {**good, "kind": "new_mode"},
        {**good, "extra": 1},
        {**messages()[0], "sequence": 1},
        {**good, "severity": "info"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            VALIDATOR.validate(bad)


def test_keyed_by_asset() -> None:
    t = IncidentTracker("global", settings(), CHANNELS)
    change = t.observe(batch([1, 1, 1], asset="pump-9"))[0]
    assert incident_key(change) == b"pump-9"
