"""How anomalous records become incidents: the debounce that opens one, the quiet period that resolves it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

SPIKE_DEVIATION = 10.0
CRITICAL_WEIGHT = 2


class IncidentSettings(BaseModel):
    """`STREAMMOE_INCIDENTS__*`. Counts are in records of one asset, spans in its `ts` units (milliseconds)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    enabled: bool = True
    """Group anomalous records into incidents and publish them."""
    topic: str = Field("streammoe-incidents", min_length=1)
    """The incidents topic (keyed by asset)."""
    open_k: int = Field(3, ge=1)
    """An incident opens when open_k of an asset's last open_n records are anomalous (a spike, an out-of-range or a
    non-finite record opens one at once)."""
    open_n: int = Field(10, ge=1)
    """The debounce window, in records of the asset."""
    spike_deviation: float = Field(SPIKE_DEVIATION, ge=0)
    """A critical record opens an incident at once only when its worst channel is at least this many of its expert's
    predicted standard deviations off what the expert reconstructs for it: a spike. Other critical records count in the
    debounce like any anomaly. 0: every critical record opens one at once."""
    critical_weight: int = Field(CRITICAL_WEIGHT, ge=1)
    """A critical record that is not a spike counts as this many anomalous records in the debounce: with the defaults, a
    critical record and one more alert within open_n records open an incident, a lone one does not."""
    evidence_p_value: float = Field(0.0, ge=0, lt=1)
    """Records with a p-value below this count as evidence, with the alerts: an incident also opens when evidence_k of
    the asset's last evidence_n records are evidence, so a sustained stretch of moderately unlikely records is not
    missed because none of them crossed the alert threshold. The alerts do not change. 0: off (only alerts open
    incidents)."""
    evidence_k: int = Field(5, ge=1)
    """Evidence records in the evidence window that open an incident."""
    evidence_n: int = Field(10, ge=1)
    """The evidence window, in records of the asset."""
    quiet_records: int = Field(100, ge=1)
    """An incident resolves after this many of its asset's records in a row without an anomaly ..."""
    quiet_ms: int = Field(0, ge=0)
    """... that also span at least this much `ts` after its last anomaly."""
    update_interval_ms: int = Field(60_000, ge=0)
    """At most one `updated` message per incident per this much `ts` (a rise in severity or a new kind is published at
    once)."""
    stale_after_s: float = Field(900.0, gt=0)
    """An open incident whose asset sent nothing for this many wall-clock seconds resolves as `stale`."""
    top_channels: int = Field(3, ge=1)
    """Channels named in an incident, by their share of its misfit."""
    keep_resolved: int = Field(64, ge=0)
    """Resolved incidents a scope remembers (state), so that an operator can still acknowledge or judge them; older ones
    are forgotten."""

    @model_validator(mode="after")
    def _k_fits_n(self) -> IncidentSettings:
        if self.open_k > self.open_n:
            raise ValueError(f"open_k ({self.open_k}) cannot exceed open_n ({self.open_n})")
        if self.evidence_k > self.evidence_n:
            raise ValueError(f"evidence_k ({self.evidence_k}) cannot exceed evidence_n ({self.evidence_n})")
        return self

    @property
    def window(self) -> int:
        """How far back an opening rule looks: the records a debounce must keep."""
        return max(self.open_n, self.evidence_n if self.evidence_p_value > 0 else 0)
