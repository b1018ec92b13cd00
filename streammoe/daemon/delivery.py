"""Outputs acknowledged -> input offsets stored; stored offsets -> commit -> checkpoint -> snapshot.

Delivery is at-least-once: a batch's input offsets are stored only after every alert, score and dead letter it
caused is acknowledged by the broker; alerts carry `alert_id` = topic/partition/offset for deduplication.

A broker outage does not stop the daemon (docs/operations.md, "Broker outages"): the batch in flight waits for
its outputs to be acknowledged, sending again what the broker failed to take, while the model stays in memory,
no input offset moves and /readyz reports the outage; it carries on by itself when the broker answers. A stop
during an outage abandons the waiting batch (its offsets were never stored, so it is read again after the
restart) and shuts down within bounded time without committing anything unacknowledged.
"""

from __future__ import annotations

import threading
import time

from confluent_kafka import Message

from streammoe.config import Settings
from streammoe.daemon.clients import SinkClient, SourceClient
from streammoe.daemon.inbox import Inbox
from streammoe.daemon.pipeline import JudgeThread
from streammoe.kafka.outage import BrokerWatch
from streammoe.kafka.source import Positions
from streammoe.logs import get_logger
from streammoe.metrics import Health, Metrics
from streammoe.state.checkpoint import Checkpointer
from streammoe.state.ownership import OwnedScopes

log = get_logger("streammoe.daemon")

DELIVERY_STEP_S = 0.5  # a batch waiting for the broker serves the consumer and checks for a stop this often
LOST_PROBE_S = 2.0  # after partitions are lost, how long the broker has to answer before it counts as an outage
PROBE_EVERY_S = 1.0  # during an outage with nothing to deliver, ask the broker for metadata this often
CLOSE_TIMEOUT_S = 10.0  # the longest a shutdown waits for the broker (final flush, commit, leaving the group)


class BatchAbandoned(Exception):
    """A stop was requested while a batch waited for the broker: its input offsets are not stored."""


class Delivery:
    """Waits for the broker to hold a batch's outputs, then stores the batch's offsets; tells outages apart."""

    def __init__(
        self,
        settings: Settings,
        source: SourceClient,
        sink: SinkClient,
        watch: BrokerWatch,
        inbox: Inbox,
        metrics: Metrics,
        health: Health,
        stopped: threading.Event,
    ) -> None:
        self.settings, self.source, self.sink, self.watch = settings, source, sink, watch
        self.inbox, self.metrics, self.health, self.stopped = inbox, metrics, health, stopped

    def acknowledge(self, msgs: list[Message], at: Positions) -> bool:
        """Wait for the broker to hold every output of the batch; only then may its input offsets move.
        True if the wait outlasted one step (the broker was slow or away)."""
        waited = self.deliver()
        self.source.mark_done(msgs, at)
        return waited

    def deliver(self) -> bool:
        """Return once the broker holds every output sent so far; True if that took longer than one step.

        Normally one short wait. While the broker is down or does not answer, the batch waits here: outputs it
        failed to take are sent again, the consumer is paused but polled (the group keeps this member, and no
        record is fetched or committed), /readyz reports the outage, and the wait ends by itself once the broker
        takes the outputs. A stop request abandons the batch (BatchAbandoned) without storing its offsets."""
        had_pending, resent, paused = self.sink.pending > 0, self.sink.resent, False
        try:
            while pending := self.sink.flush(DELIVERY_STEP_S):
                if self.sink.resent > resent:
                    self.metrics.outputs_resent.inc(self.sink.resent - resent)
                    resent = self.sink.resent
                    self.watch.begin(f"outputs not acknowledged ({self.sink.last_failure})")
                if self.stopped.is_set():
                    log.warning(
                        "batch_abandoned",
                        unacknowledged_outputs=pending,
                        reason="stop requested while waiting for the broker; the batch is read again",
                    )
                    raise BatchAbandoned()
                if not paused:
                    self.source.pause()
                    paused = True
                self.inbox.add(self.source.poll_paused(0))
                self.health.progress(len(self.source.assigned))  # waiting, not hung: readiness shows why
        finally:
            if paused:
                self.source.resume()
        if had_pending:
            self.watch.end()
        return paused

    def final_flush(self) -> None:
        """Wait briefly for outputs still unacknowledged (none, unless a batch was abandoned), then drop them so the
        producer closes at once; the batch they came from has no stored offset and is read again."""
        wait = 0.0 if self.watch.down else min(self.settings.kafka.delivery_timeout_s, CLOSE_TIMEOUT_S)
        if self.sink.flush(wait):
            log.warning("outputs_dropped_at_shutdown", outputs=self.sink.drop_pending())


class OutageProbe:
    """Asks the broker whether it answers, where no pending output would time out to say it does not."""

    def __init__(self, sink: SinkClient, watch: BrokerWatch) -> None:
        self.sink, self.watch = sink, watch
        self._next_probe = 0.0

    def partitions_lost(self) -> None:
        """Lost (not revoked) partitions: the group coordinator stopped answering, or this worker stalled past its
        session. A frozen broker refuses nothing and, with no output pending, times nothing out, so this is often
        the first sign of it: ask the broker, and call it an outage if it does not answer."""
        if not self.watch.down and not self.sink.reachable(LOST_PROBE_S):
            self.watch.begin("partitions lost and the broker does not answer")

    def probe(self) -> None:
        """During an outage with no batch waiting, end it once the broker answers a metadata request."""
        if not self.watch.down or time.monotonic() < self._next_probe:
            return
        self._next_probe = time.monotonic() + PROBE_EVERY_S
        if self.sink.flush(0) == 0 and self.sink.reachable(PROBE_EVERY_S):
            self.watch.end()


class Commits:
    """The cadence after delivery: stored offsets are committed, models checkpointed, scopes snapshotted."""

    def __init__(
        self,
        settings: Settings,
        source: SourceClient,
        watch: BrokerWatch,
        checkpointer: Checkpointer,
        scopes: OwnedScopes,
        judge_thread: JudgeThread,
        metrics: Metrics,
    ) -> None:
        self.settings, self.source, self.watch = settings, source, watch
        self.checkpointer, self.scopes, self.judge_thread, self.metrics = checkpointer, scopes, judge_thread, metrics
        self._last_commit = time.monotonic()

    def maybe_commit(self) -> None:
        """Between batches, once per commit interval:

        1. commit the offsets stored so far (those of acknowledged batches only);
        2. checkpoint every held model, when the checkpoint interval has passed;
        3. snapshot the scopes that learned since their last snapshot, when the snapshot interval has passed.

        A batch is learned before its offsets are stored, so what step 1 commits the models of steps 2 and 3
        have learned already."""
        if time.monotonic() - self._last_commit < self.settings.kafka.commit_interval_s:
            return
        self.commit()
        if self.checkpointer.due():
            self.checkpoint()
        if self.scopes.snapshot_due():
            self.snapshot()

    def commit(self) -> None:
        """Send acknowledged offsets (counted in streammoe_commits_total when the broker confirms). Not during an
        outage: the commit would only queue up, and leaving the group at shutdown waits for queued commits."""
        if not self.watch.down:
            self.source.commit()
        self._last_commit = time.monotonic()

    def checkpoint(self) -> None:
        self.judge_thread.require_idle("a checkpoint")
        for state in list(self.scopes.models.values()):
            if self.checkpointer.save(state, self.scopes.reflected(state)) is not None:
                self.metrics.checkpoints.inc()

    def snapshot(self) -> None:
        """Scopes that learned since their last snapshot (not during an outage: the writes would only wait)."""
        self.judge_thread.require_idle("a snapshot")
        if not self.watch.down:
            self.scopes.snapshot_changed()

    def close_source(self) -> None:
        """Commit what is acknowledged (unless the broker is away) and leave the group, in bounded time."""
        commit = not self.watch.down
        self.watch.closing()
        self.source.close(CLOSE_TIMEOUT_S, commit=commit)
