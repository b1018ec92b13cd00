"""The daemon's shutdown steps, in their order: settle, flush, checkpoint, snapshot, leave the group, close."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from streammoe.logs import get_logger

if TYPE_CHECKING:
    from streammoe.daemon.service import Daemon

log = get_logger("streammoe.daemon")


def shut_down(d: Daemon, failed: bool) -> None:
    """Flush, checkpoint, commit and leave the group, in bounded time even while the broker is unreachable.

    Only batches whose outputs were acknowledged have stored offsets, so whatever commits here was
    acknowledged, after a failure too. During an outage nothing is committed: the acknowledged but
    uncommitted batches are read again after the restart (at-least-once)."""
    steps: list[tuple[str, Callable[[], object]]] = [
        ("settle", d.judge_thread.wait_idle),  # a loop that failed mid-batch: let the judge thread finish
        ("flush", d.delivery.final_flush),
        ("checkpoint", d.commits.checkpoint),
        ("snapshot", d.commits.snapshot),
        ("close", lambda: close_source(d)),
        ("close_control", d.control.close),
        ("close_snapshots", d.scopes.close),
    ]
    for name, step in steps:
        try:
            step()
        except Exception as e:  # noqa: BLE001 - keep shutting down; the first error is what the caller sees
            log.error("shutdown_step_failed", step=name, error=str(e))
    if d.http is not None:
        d.http.stop()
    d.stop_heartbeat()
    d.judge_thread.shutdown()
    log.info(
        "daemon_stopped",
        failed=failed,
        **d.summary.totals(),
        stage_seconds=d.metrics.stage_totals(),
        committed={f"{t}[{p}]": o for (t, p), o in sorted(d.source.committed.items())},
    )


def close_source(d: Daemon) -> None:
    d.rebalance.closing = True  # leaving the group revokes everything: the shutdown snapshot was just written
    d.inbox.close()  # that revoke runs on the thread that closes the consumer: nothing is left to drop
    d.commits.close_source()
