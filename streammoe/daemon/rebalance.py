"""Partitions assigned, revoked or lost -> which model scopes this worker holds.

The consumer calls these hooks inside its polls, from any of the loop's poll sites (the loop's fetch, the read
ahead, a backpressure pause, a warm-up fit, a wait for the broker). What they may do to the loop is bounded:
restore or hand over scopes (state/ownership.py), and drop the released partitions' messages from the inbox
(`PartitionDropper`, the inbox's only operation open to them). A batch being judged when partitions are
released finishes first, so a scope's snapshot holds everything it learned.
"""

from __future__ import annotations

from streammoe.config import Settings
from streammoe.daemon.accounting import account_learning
from streammoe.daemon.clients import ControlClient
from streammoe.daemon.inbox import PartitionDropper, PartitionKey
from streammoe.daemon.pipeline import JudgeThread
from streammoe.daemon.warmup import WarmUp
from streammoe.metrics import Health, Metrics
from streammoe.silence import SilenceWatch
from streammoe.state.checkpoint import ModelState
from streammoe.state.ownership import OwnedScopes


class Rebalance:
    def __init__(
        self,
        settings: Settings,
        scopes: OwnedScopes,
        control: ControlClient,
        inbox: PartitionDropper,
        judge_thread: JudgeThread,
        metrics: Metrics,
        silence: SilenceWatch,
    ) -> None:
        self.topic = settings.kafka.input_topic
        self.silence = silence
        self.scopes, self.control, self.inbox = scopes, control, inbox
        self.judge_thread, self.metrics = judge_thread, metrics
        self.closing = False  # leaving the group revokes everything: the shutdown snapshot was just written

    def assigned(self, keys: list[PartitionKey]) -> dict[PartitionKey, int]:
        """Restore the scopes of new partitions before their records are scored (the source asks, inside the
        rebalance); returns where partitions must start when a restored model learned less than was committed."""
        starts, restored = self.scopes.assigned(self.topic, [p for t, p in keys if t == self.topic])
        for state in restored:  # verdicts it has not seen yet are read again for it
            self.control.rewind(state.learned_offsets.get(self.control.topic, {}))
        self.metrics.held_scopes(len(self.scopes.models))
        return {(self.topic, p): o for p, o in starts.items()}

    def released(self, keys: list[PartitionKey], lost: bool) -> None:
        """Hand over the scopes of revoked partitions (snapshot, then drop), or drop those of lost ones; the
        messages of these partitions waiting in the inbox are dropped too (their new owner reads them)."""
        self.judge_thread.wait_idle()
        self.inbox.drop_partitions(keys)
        parts = [p for t, p in keys if t == self.topic]
        if lost:
            self.scopes.lost(parts)
        else:
            self.scopes.revoked(parts, snapshot=not self.closing)
        self.metrics.forget_partitions(self.topic, parts)  # their lag is the new owner's to report
        self.silence.forget_partitions(parts)
        self.metrics.held_scopes(len(self.scopes.models))


class ScopeEvents:
    """What the metrics say when a scope is restored, dropped or snapshotted (OwnedScopes' callbacks)."""

    def __init__(self, settings: Settings, warmup: WarmUp, metrics: Metrics, health: Health) -> None:
        self.k_max = settings.model.k_max
        self.warmup, self.metrics, self.health = warmup, metrics, health

    def restored(self, state: ModelState) -> None:
        self.health.working("restoring scopes")  # each scope restored on assignment: busy, not stuck
        if state.recovered:
            self.metrics.checkpoint_fallbacks.labels(state.recovered).inc()
        self.metrics.scopes_restored.labels(state.origin).inc()
        if state.detector is not None:  # a restored model shows its experts from the start
            account_learning(self.metrics, state, None)

    def dropped(self, state: ModelState) -> None:
        """Another worker owns it now: its warm-up records are its new owner's, and its gauges here mislead."""
        self.warmup.forget(state.scope)
        self.metrics.forget_scope(state.scope, self.k_max)

    def snapshot_done(self, outcome: str) -> None:
        """One write to the snapshot topic: a whole snapshot, a quiet scope's new position, or a failure."""
        counters = {
            "written": self.metrics.snapshots,
            "repositioned": self.metrics.snapshot_repositions,
            "failed": self.metrics.snapshot_failures,
        }
        counters[outcome].inc()
