"""The demo's final JSON summary: what was produced, scored, alerted and dead-lettered, with every alert tallied
against the simulator's ground truth per injected fault. Kept apart from the run so `Demo` only orchestrates."""

from __future__ import annotations

from typing import TYPE_CHECKING

from streammoe.demo.incidents import incident_summary

if TYPE_CHECKING:
    from streammoe.daemon import RunSummary
    from streammoe.demo.feed import Feed
    from streammoe.demo.view import DemoState


def demo_summary(
    state: DemoState,
    feed: Feed,
    *,
    stopped_by: str,
    fit: dict,
    daemon_summary: RunSummary | None,
    failed: str | None,
    daemon_error: BaseException | None,
) -> dict:
    """The summary line the demo prints (and `--summary-json` extends): one dict, JSON-ready."""
    from streammoe.demo.sensors import FAULTS

    st = state
    faults = {}
    for kind in FAULTS:
        faults[kind] = {
            "records": sum(n for lbl, n in feed.produced_by_truth.items() if lbl.endswith(f"+{kind}")),
            "alerts": sum(n for lbl, n in st.alerts_by_truth.items() if lbl.endswith(f"+{kind}")),
        }
    d = daemon_summary
    return {
        "stopped_by": stopped_by,
        "seconds": round(st.elapsed(), 1),
        "bootstrap_fit": fit,
        "records_produced": st.produced,
        "malformed_sent": st.malformed_sent,
        "partial_sent": st.partial_sent,
        "delivered": feed.delivered,
        "delivery_failed": feed.delivery_failed,
        "records_scored": st.scored,
        "produced_by_truth": dict(sorted(feed.produced_by_truth.items())),
        "alerts": st.alerts,
        "alerts_by_severity": dict(st.alerts_by_severity),
        "alerts_by_truth": dict(sorted(st.alerts_by_truth.items())),
        "faults": faults,
        "events": st.events_by_kind(),
        "incidents": incident_summary(st, feed.truth),
        "dead_letters": st.dead_letters,
        "dead_letters_by_reason": dict(st.dead_by_reason),
        "experts_active": st.experts_active,
        "daemon": None
        if d is None
        else {"records_in": d.records_in, "alerts": d.alerts, "dead_letters": d.dead_letters, "batches": d.batches},
        "failed": failed,
        "daemon_error": None if daemon_error is None else repr(daemon_error),
    }
