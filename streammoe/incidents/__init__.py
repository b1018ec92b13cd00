"""Incidents: an asset's anomalous records grouped into one problem with a start, an end and its story.

No Kafka and no torch here: the daemon and the offline scorer feed numpy arrays to `IncidentTracker` and
publish or write what comes back (docs/alerts.md, "Incidents").
"""

from streammoe.incidents.incident import Incident, Source, incident_id
from streammoe.incidents.settings import IncidentSettings
from streammoe.incidents.tracker import Batch, Change, IncidentTracker, critical_records, opens_at_once

__all__ = [
    "Batch",
    "Change",
    "Incident",
    "IncidentSettings",
    "IncidentTracker",
    "Source",
    "critical_records",
    "incident_id",
    "opens_at_once",
]
