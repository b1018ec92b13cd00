"""Incident messages for the incidents topic (JSON, keyed by asset), matching schemas/incident.schema.json."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from streammoe.incidents import Change

SCHEMA_VERSION = 1


@cache
def incident_schema() -> dict:
    return json.loads(resources.files("streammoe.wire").joinpath("schemas", "incident.schema.json").read_text())


def build_incident(change: Change) -> dict:
    """The message for one tracker change; consumers deduplicate on (incident_id, sequence)."""
    return {"schema_version": SCHEMA_VERSION, "status": change.status, "sequence": change.sequence, **change.body}


def incident_key(change: Change) -> bytes:
    """Keyed by asset, like alerts: an asset's incidents stay in order on one partition."""
    return str(change.body["asset"]).encode()
