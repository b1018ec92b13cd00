"""`streammoe run`: the loop that wires source → decode → score → learn → publish → acknowledge → commit.

Each stage is a small method taking the previous stage's output. With a model, the loop is pipelined
(`_judge_reading_ahead`): the next batch is fetched and decoded while a worker thread scores and learns from
this one, at most one batch ahead, pausing the partitions when judging takes long. Delivery is
at-least-once: a batch's input offsets are stored only after every alert, score and dead letter it caused
is acknowledged by the broker; alerts carry `alert_id` = topic/partition/offset for deduplication.

Records are routed by asset to model scopes (`OwnedScopes`: one global model by default, or one per asset or asset
group); a scope follows its input partition between workers of the group through the snapshot topic.

SIGTERM/SIGINT stop polling; the batch in flight finishes, outputs are flushed, offsets committed, the
model checkpointed, and the process exits 0.

A broker outage does not stop the daemon (docs/operations.md, "Broker outages"): the batch in flight waits for
its outputs to be acknowledged, sending again what the broker failed to take, while the model stays in memory,
no input offset moves and /readyz reports the outage; it carries on by itself when the broker answers. A stop
during an outage abandons the waiting batch (its offsets were never stored, so it is read again after the
restart) and shuts down within bounded time without committing anything unacknowledged.
"""

from __future__ import annotations

import argparse
import contextvars
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import count
from typing import Callable, TypeVar

import numpy as np
import orjson
import structlog
import torch
from confluent_kafka import KafkaException, Message

from streammoe.wire.alerts import Origin, build_alert, build_score
from streammoe.state.checkpoint import Checkpointer, ModelState
from streammoe.config import Settings, SettingsError, load_settings
from streammoe.kafka.control import ControlError, ControlListener, ExpertVerdict, parse_command
from streammoe.model.detector import LearnReport, MixtureDetector, ScoredBatch
from streammoe.logs import configure_logging, get_logger
from streammoe.metrics import Health, HttpServer, Metrics
from streammoe.model.scaler import implausible_rows
from streammoe.kafka.outage import BrokerWatch
from streammoe.state.ownership import OwnedScopes
from streammoe.state.persistence import ModelLoadError
from streammoe.wire.records import DecodedBatch, RecordDecoder
from streammoe.state.scopes import GLOBAL_SCOPE
from streammoe.kafka.sink import DeliveryError, Sink
from streammoe.kafka.source import Positions, Source, positions

log = get_logger("streammoe.daemon")

T = TypeVar("T")
REF_PARTITION_SHIFT = 40  # model refs pack (partition << 40) | offset, unpacked again in mode events
DELIVERY_STEP_S = 0.5  # a batch waiting for the broker serves the consumer and checks for a stop this often
LOST_PROBE_S = 2.0  # after partitions are lost, how long the broker has to answer before it counts as an outage
PROBE_EVERY_S = 1.0  # during an outage with nothing to deliver, ask the broker for metadata this often
CLOSE_TIMEOUT_S = 10.0  # the longest a shutdown waits for the broker (final flush, commit, leaving the group)
PAUSE_AFTER_S = 1.0  # pipelined: a batch judged for longer than this pauses the partitions until it is done


class BatchAbandoned(Exception):
    """A stop was requested while a batch waited for the broker: its input offsets are not stored."""


@dataclass
class RunSummary:
    records_in: int = 0
    alerts: int = 0
    non_alerts: int = 0
    dead_letters: int = 0
    warmup: int = 0
    batches: int = 0
    seconds: float = 0.0
    busy_seconds: float = 0.0  # from the first batch's arrival to the last batch's acknowledgement
    read_ahead: int = 0  # batches fetched and decoded while the batch before them was being judged


@dataclass
class Part:
    """Rows of a decoded batch scored by one scope's model, with what their outputs need to say about it (taken
    when judged: the scope may be handed to another worker before the outputs are published)."""

    scope: str
    scored: ScoredBatch
    rows: np.ndarray
    version: str
    expert_status: dict[int, str]


@dataclass
class Judged:
    """What the models said about a decoded batch: scored parts, warm-up rows, and what each scope learned."""

    parts: list[Part] = field(default_factory=list)
    warmup_rows: int = 0
    learned: list[tuple[str, str, LearnReport]] = field(default_factory=list)  # scope, model version, report


class Daemon:
    def __init__(self, settings: Settings, *, install_signals: bool = False) -> None:
        self.settings = settings
        self.channels = list(settings.records.channels)
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        self.metrics = Metrics()
        self.health = Health(settings.http.ready_stale_s)
        self.decoder = RecordDecoder(settings.records)
        self.checkpointer = Checkpointer(settings.checkpoint, self.channels)
        self.scopes = OwnedScopes(settings, self.checkpointer, on_restored=self._scope_restored,
                                  on_dropped=self._scope_dropped, on_snapshot=self._snapshot_done)
        if self.scopes.single:  # restored now: an unusable checkpoint stops the daemon before it joins the group
            self.scopes.get(GLOBAL_SCOPE)
        self.watch = BrokerWatch(self.metrics, self.health)
        self.source = Source(settings.kafka, settings.batching, on_lag=self._lag, on_error=self.watch.client_error,
                             on_committed=self.metrics.commits.inc, on_lost=self._partitions_lost,
                             on_assigned=self._partitions_assigned, on_released=self._partitions_released)
        self.sink = Sink(settings.kafka, on_error=self.watch.client_error)
        self.control = ControlListener(settings.kafka, on_error=self.watch.client_error)
        self._next_probe = 0.0
        self._control_retry_at = 0.0
        self.http = (
            HttpServer(settings.http.host, settings.http.port, self.metrics, self.health)
            if settings.http.enabled else None
        )
        self.summary = RunSummary()
        self._stop = threading.Event()
        self._batch_ids = count(1)
        self._warmup: dict[str, list[np.ndarray]] = {}  # scope -> records collected for its first fit
        self._carry: list[Message] = []
        self._ahead: tuple[list[Message], int, DecodedBatch] | None = None  # the next batch, decoded early
        self._judge_pool = ThreadPoolExecutor(1, thread_name_prefix="streammoe-judge")
        self._judging: Future[Judged] | None = None
        self._closing = False
        self._last_commit = time.monotonic()
        self._first_batch_at: float | None = None
        if install_signals:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)

    @property
    def models(self) -> dict[str, ModelState]:
        """The model scopes this worker holds now."""
        return self.scopes.models

    @property
    def state(self) -> ModelState:
        """The global scope's model (STREAMMOE_SCOPES__MODE=global: every record goes to it)."""
        return self.scopes.get(GLOBAL_SCOPE)

    # ---- control -------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish its batch in flight and shut down (thread- and signal-safe)."""
        self._stop.set()

    def _on_signal(self, signum: int, frame: object) -> None:
        log.info("stop_requested", signal=signal.Signals(signum).name)
        self.stop()

    def run(self, max_records: int | None = None, timeout_s: float | None = None) -> RunSummary:
        """Process until stopped, or (for tests) until `max_records` inputs are handled or `timeout_s` passes."""
        started = time.monotonic()
        deadline = started + timeout_s if timeout_s is not None else None
        if self.http is not None:
            self.http.start()
        log.info("daemon_started", input_topic=self.settings.kafka.input_topic, scopes=self.settings.scopes.mode,
                 model=self.state.version if self.scopes.single else None,
                 http_port=self.http.port if self.http else None)
        self.source.subscribe()
        failed = True
        try:
            while not self._stop.is_set():
                if max_records is not None and self.summary.records_in >= max_records:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
                msgs, self._carry = self._carry or self.source.poll_batch(), []
                self.health.progress(len(self.source.assigned))
                self.metrics.assigned_partitions.set(len(self.source.assigned))
                if msgs:
                    try:
                        self._handle(msgs)
                    except BatchAbandoned:
                        break
                else:
                    self.sink.poll()
                self._probe_broker()
                self._maybe_commit()
                self._apply_control()
            failed = False
        finally:
            self.summary.seconds = time.monotonic() - started
            self._shutdown(failed)
        return self.summary

    # ---- one batch -----------------------------------------------------------------------------------------

    def _handle(self, msgs: list[Message]) -> None:
        t0 = time.monotonic()
        if self._first_batch_at is None:
            self._first_batch_at = t0
        with structlog.contextvars.bound_contextvars(batch=next(self._batch_ids), records=len(msgs)):
            with self._timed("decode"):
                decoded = self._decode(msgs)
            at = positions(msgs)
            routes = self._route(decoded, at)
            judged = (self._judge_reading_ahead(msgs, decoded, routes, at) if self._pipelined(routes)
                      else self._judge(msgs, decoded, routes, at))
            with self._timed("publish"):
                self._publish(msgs, decoded, judged)
            with self._timed("acknowledge"):
                waited = self._acknowledge(msgs, at)
            elapsed = time.monotonic() - t0
            self.metrics.batch_seconds.observe(elapsed)
            self.metrics.batch_size.observe(len(msgs))
            if not waited and elapsed * 1000 > self.settings.kafka.max_poll_interval_ms / 4:
                log.warning("slow_batch", seconds=round(elapsed, 3), hint="lower STREAMMOE_BATCHING__MAX_BATCH")
            log.debug("batch_done", seconds=round(elapsed, 4), dead=len(decoded.dead))
        self.summary.batches += 1
        self.summary.busy_seconds = time.monotonic() - self._first_batch_at

    def _decode(self, msgs: list[Message]) -> DecodedBatch:
        self.metrics.records_in.inc(len(msgs))
        self.summary.records_in += len(msgs)
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] is msgs and ahead[1] == len(msgs):  # read ahead, nothing added since
            return ahead[2]
        return self.decoder.decode([m.value() for m in msgs])

    def _route(self, decoded: DecodedBatch, at: Positions) -> list[tuple[ModelState, np.ndarray]]:
        """Each scope's state with the decoded rows that belong to it (restored on its first record)."""
        return [(self.scopes.get(scope), rows)
                for scope, rows in self.scopes.route(decoded.assets, at.partitions[decoded.index])]

    def _pipelined(self, routes: list[tuple[ModelState, np.ndarray]]) -> bool:
        """Read ahead only when every scope has a model: a warm-up fit polls the consumer itself (`_keep_polling`)."""
        return self.settings.batching.pipeline and all(state.detector is not None for state, _ in routes)

    def _judge_reading_ahead(self, msgs: list[Message], decoded: DecodedBatch,
                             routes: list[tuple[ModelState, np.ndarray]], at: Positions) -> Judged:
        """Judge the batch in a worker thread while this one fetches and decodes the next batch.

        At most one batch is read ahead; it waits in `_carry` and is handled next, so batches are still judged,
        published and acknowledged one at a time and in order, and offsets are stored only after a batch's outputs
        are acknowledged. Everything else that touches the model (control verdicts, checkpoints) runs between
        batches, when the worker is idle. Torch releases the GIL in its kernels, so on two cores the fetch and
        decode of the next batch mostly hide behind scoring. Backpressure: if judging takes longer than
        PAUSE_AFTER_S (a candidate expert being trained, a slow CPU), the partitions are paused and the consumer
        is polled only to keep the group membership, so nothing more is fetched into memory."""
        future = self._judging = self._judge_pool.submit(contextvars.copy_context().run, self._judge, msgs, decoded,
                                                         routes, at)
        if not self._carry and not self._stop.is_set():
            with self._timed("read_ahead"):
                ahead = self.source.poll_batch()
                if ahead:
                    self._carry = ahead
                    self._ahead = (ahead, len(ahead), self.decoder.decode([m.value() for m in ahead]))
                    self.summary.read_ahead += 1
        try:
            return self._judged(future, PAUSE_AFTER_S)
        except FutureTimeout:
            pass
        self.source.pause()
        self.metrics.backpressure_pauses.inc()
        log.info("backpressure_pause", hint="judging a batch took longer than the pause threshold")
        try:
            while not future.done():
                self._carry += self.source.poll_paused(0.1)
                self.health.progress(len(self.source.assigned))
        finally:
            self.source.resume()
        return self._judged(future, None)

    def _judged(self, future: Future[Judged], timeout: float | None) -> Judged:
        result = future.result(timeout=timeout)
        self._judging = None
        return result

    def _judge(self, msgs: list[Message], decoded: DecodedBatch, routes: list[tuple[ModelState, np.ndarray]],
               at: Positions) -> Judged:
        """Score each scope's rows with what it learned before this batch, then learn from them (never from what
        they flag). Rows of a scope still warming up are collected for its first fit instead."""
        judged = Judged()
        topic, partitions, offsets = at
        for state, rows in routes:
            if state.detector is None:
                judged.warmup_rows += len(rows)
                self._warm_up(state, decoded.values[rows])
            elif len(rows):
                self._score_and_learn(state, state.detector, judged, decoded, rows,
                                      topic, partitions[decoded.index[rows]], offsets[decoded.index[rows]])
            if self.scopes.single:  # the one model has seen every record of the batch, dead letters too
                self._advance(state, topic, partitions, offsets)
            elif len(rows):
                self._advance(state, topic, partitions[decoded.index[rows]], offsets[decoded.index[rows]])
        return judged

    @staticmethod
    def _advance(state: ModelState, topic: str, partitions: np.ndarray, offsets: np.ndarray) -> None:
        """Learned now, or part of the warm-up fit: never to be learned again by this model."""
        for p in np.unique(partitions):
            state.advance(topic, int(p), int(offsets[partitions == p].max()) + 1)

    def _score_and_learn(self, state: ModelState, detector: MixtureDetector, judged: Judged, decoded: DecodedBatch,
                         rows: np.ndarray, topic: str, partitions: np.ndarray, offsets: np.ndarray) -> None:
        detector.accelerate(self.settings.torch_compile, self.settings.precision)  # restored or fitted, same way
        learned_to = state.learned_offsets.get(topic, {})
        fresh = offsets >= np.array([learned_to.get(int(p), 0) for p in range(int(partitions.max()) + 1)])[partitions]
        refs = (partitions << REF_PARTITION_SHIFT) | offsets
        report = None
        for part, learn in ((np.flatnonzero(~fresh), False), (np.flatnonzero(fresh), True)):
            if not len(part):
                continue
            batch_rows = rows[part]
            with self._timed("score"):
                scored = detector.score_many(decoded.values[batch_rows], refs=refs[part],
                                             timestamps=decoded.ts[batch_rows])
            self._count_poison(scored)
            if learn:
                with self._timed("learn"):
                    report = detector.learn_many(scored)
            judged.parts.append(Part(state.scope, scored, batch_rows, state.version, detector.expert_status()))
        if report is not None:
            judged.learned.append((state.scope, state.version, report))
            self._account_learning(state, report)

    def _count_poison(self, scored: ScoredBatch) -> None:
        """Records the model scored but must not learn from: alerted (reason non_finite or out_of_range)."""
        counts = {"non_finite_score": int((~scored.valid).sum()),
                  "out_of_range": int((scored.valid & ~scored.in_range).sum())}
        for reason, n in counts.items():
            if n:
                self.metrics.poison_records.labels(reason).inc(n)
        if any(counts.values()):
            log.warning("poison_records", **counts)

    def _warm_up(self, state: ModelState, values: np.ndarray) -> None:
        """Collect a scope's first valid records; once there are enough, fit its first model (polling meanwhile)."""
        collected = self._warmup.setdefault(state.scope, [])
        collected.append(values)
        have = sum(len(v) for v in collected)
        self.metrics.warmup_records.inc(len(values))
        self.summary.warmup += len(values)
        if have < self.settings.checkpoint.warmup_records:
            return
        x = np.concatenate(collected)
        del self._warmup[state.scope]
        absurd = implausible_rows(x)
        if absurd.any():  # a few readings like 1e30 would otherwise set a channel's scale and blind it
            self.metrics.poison_records.labels("warmup_out_of_range").inc(int(absurd.sum()))
            log.warning("warmup_records_left_out", records=int(absurd.sum()), reason="out_of_range")
            x = x[~absurd]
        detector = MixtureDetector(len(self.channels), self.settings.model, self.channels)
        log.info("warmup_fit_started", scope=state.scope, records=len(x))
        report = self._keep_polling(lambda: detector.fit(x))
        state.detector = detector
        log.info("warmup_fit_done", scope=state.scope, experts=report.k_selected, weights=report.weights)
        self._account_learning(state, None)

    def _account_learning(self, state: ModelState, report: LearnReport | None) -> None:
        scope, detector = state.scope, state.detector
        if detector is None:
            return
        if report is not None:
            self.metrics.records_learned.inc(report.learned)
            if report.skipped_step:
                self.metrics.learn_steps_skipped.labels(report.skipped_step).inc()
            if report.drift:
                self.metrics.drifts.labels(scope).inc()
                log.info("likelihood_drift", scope=scope, detections=detector.counters["drifts"])
            for event in report.events:
                self.metrics.mode_events.labels(event.kind).inc()
                log.info("mode_event", **event.as_dict())
        self.metrics.experts_active.labels(scope).set(detector.model.n_active)
        for k, w in enumerate(detector.mixture_weights()):
            self.metrics.mixture_weight.labels(scope, str(k)).set(float(w))

    def _publish(self, msgs: list[Message], decoded: DecodedBatch, judged: Judged) -> None:
        kafka, sink, s = self.settings.kafka, self.sink, self.summary
        for d in decoded.dead:
            m = msgs[d.index]
            sink.dead_letter(m.value(), m.key(), m.topic(), m.partition(), m.offset(), d.reason, d.detail)
            self.metrics.dead_letters.labels(d.reason).inc()
        s.dead_letters += len(decoded.dead)
        s.non_alerts += judged.warmup_rows
        self.metrics.non_alerts.inc(judged.warmup_rows)
        for part in judged.parts:
            scored, rows = part.scored, part.rows
            visit = range(len(rows)) if kafka.scores_topic else np.flatnonzero(scored.is_anomaly)
            for i in visit:
                row = rows[i]
                m = msgs[decoded.index[row]]
                origin = Origin(m.topic(), m.partition(), m.offset())
                asset, ts = decoded.assets[row], int(decoded.ts[row])
                if kafka.scores_topic:
                    score = build_score(scored, i, asset=asset, ts=ts, origin=origin, scope=part.scope)
                    sink.send(kafka.scores_topic, orjson.dumps(score), asset.encode())
                if not scored.is_anomaly[i]:
                    continue
                alert = build_alert(
                    scored, i, asset=asset, ts=ts, origin=origin, channels=self.channels,
                    expert_status=part.expert_status, model_version=part.version, settings=self.settings.alerts,
                    scope=part.scope,
                )
                sink.send(kafka.alerts_topic, orjson.dumps(alert), asset.encode())
                self.metrics.alerts.labels(alert["severity"]).inc()
                s.alerts += 1
            n_normal = int((~scored.is_anomaly).sum())
            s.non_alerts += n_normal
            self.metrics.non_alerts.inc(n_normal)
        for scope, version, report in judged.learned:
            for event in report.events:
                sink.send(kafka.events_topic, orjson.dumps(self._event_payload(event.as_dict(), scope, version)),
                          scope.encode())

    def _event_payload(self, event: dict, scope: str, version: str) -> dict:
        return event_payload(event, input_topic=self.settings.kafka.input_topic, scope=scope, model_version=version)

    def _acknowledge(self, msgs: list[Message], at: Positions) -> bool:
        """Wait for the broker to hold every output of the batch; only then may its input offsets move.
        True if the wait outlasted one step (the broker was slow or away)."""
        waited = self._deliver()
        self.source.mark_done(msgs, at)
        return waited

    def _deliver(self) -> bool:
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
                if self._stop.is_set():
                    log.warning("batch_abandoned", unacknowledged_outputs=pending,
                                reason="stop requested while waiting for the broker; the batch is read again")
                    raise BatchAbandoned()
                if not paused:
                    self.source.pause()
                    paused = True
                self._carry += self.source.poll_paused(0)
                self.health.progress(len(self.source.assigned))  # waiting, not hung: readiness shows why
        finally:
            if paused:
                self.source.resume()
        if had_pending:
            self.watch.end()
        return paused

    # ---- ownership -----------------------------------------------------------------------------------------

    def _partitions_assigned(self, keys: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Restore the scopes of new partitions before their records are scored (Source asks, inside the
        rebalance); returns where partitions must start when a restored model learned less than was committed."""
        topic = self.settings.kafka.input_topic
        starts, restored = self.scopes.assigned(topic, [p for t, p in keys if t == topic])
        for state in restored:  # verdicts it has not seen yet are read again for it
            self.control.rewind(state.learned_offsets.get(self.control.topic, {}))
        self.metrics.scopes_held.set(len(self.scopes.models))
        return {(topic, p): o for p, o in starts.items()}

    def _partitions_released(self, keys: list[tuple[str, int]], lost: bool) -> None:
        """Hand over the scopes of revoked partitions (snapshot, then drop), or drop those of lost ones.

        Called inside a poll, maybe while a worker thread judges a batch: that batch finishes first, so the snapshot
        holds all it learned. Batches read ahead from these partitions are dropped: their new owner reads them."""
        if self._judging is not None:
            wait([self._judging])  # its result or error is collected by the loop
        gone = set(keys)
        self._carry[:] = [m for m in self._carry if (m.topic(), m.partition()) not in gone]  # in place: see _deliver
        self._ahead = None
        topic = self.settings.kafka.input_topic
        parts = [p for t, p in keys if t == topic]
        if lost:
            self.scopes.lost(parts)
        else:
            self.scopes.revoked(parts, snapshot=not self._closing)
        self.metrics.scopes_held.set(len(self.scopes.models))

    def _scope_restored(self, state: ModelState) -> None:
        if state.recovered:
            self.metrics.checkpoint_fallbacks.labels(state.recovered).inc()
        self.metrics.scopes_restored.labels(state.origin).inc()
        if state.detector is not None:  # a restored model shows its experts from the start
            self._account_learning(state, None)

    def _scope_dropped(self, state: ModelState) -> None:
        """Another worker owns it now: its gauges here would only mislead."""
        self._warmup.pop(state.scope, None)
        for gauge, labels in ((self.metrics.experts_active, [(state.scope,)]),
                              (self.metrics.mixture_weight,
                               [(state.scope, str(k)) for k in range(self.settings.model.k_max)])):
            for label in labels:
                try:
                    gauge.remove(*label)
                except KeyError:
                    pass

    def _snapshot_done(self, written: bool) -> None:
        (self.metrics.snapshots if written else self.metrics.snapshot_failures).inc()

    def _partitions_lost(self) -> None:
        """Lost (not revoked) partitions: the group coordinator stopped answering, or this worker stalled past its
        session. A frozen broker refuses nothing and, with no output pending, times nothing out, so this is often
        the first sign of it: ask the broker, and call it an outage if it does not answer."""
        if not self.watch.down and not self.sink.reachable(LOST_PROBE_S):
            self.watch.begin("partitions lost and the broker does not answer")

    def _probe_broker(self) -> None:
        """During an outage with no batch waiting, end it once the broker answers a metadata request."""
        if not self.watch.down or time.monotonic() < self._next_probe:
            return
        self._next_probe = time.monotonic() + PROBE_EVERY_S
        if self.sink.flush(0) == 0 and self.sink.reachable(PROBE_EVERY_S):
            self.watch.end()

    # ---- housekeeping --------------------------------------------------------------------------------------

    @contextmanager
    def _timed(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.metrics.stage_seconds.labels(stage).observe(time.perf_counter() - t0)

    def _maybe_commit(self) -> None:
        if time.monotonic() - self._last_commit >= self.settings.kafka.commit_interval_s:
            self._commit()
            if self.checkpointer.due():
                self._checkpoint()
            if self.scopes.snapshot_due():
                self._snapshot()

    def _commit(self) -> None:
        """Send acknowledged offsets (counted in streammoe_commits_total when the broker confirms). Not during an
        outage: the commit would only queue up, and leaving the group at shutdown waits for queued commits."""
        if not self.watch.down:
            self.source.commit()
        self._last_commit = time.monotonic()

    def _checkpoint(self) -> None:
        for state in list(self.models.values()):
            if self.checkpointer.save(state) is not None:
                self.metrics.checkpoints.inc()

    def _snapshot(self) -> None:
        """Scopes that learned since their last snapshot (not during an outage: the writes would only wait)."""
        if not self.watch.down:
            self.scopes.snapshot_changed()

    def _close_source(self) -> None:
        commit = not self.watch.down
        self.watch.closing()
        self._closing = True  # leaving the group revokes everything: the shutdown snapshot was just written
        self.source.close(CLOSE_TIMEOUT_S, commit=commit)

    def _final_flush(self) -> None:
        """Wait briefly for outputs still unacknowledged (none, unless a batch was abandoned), then drop them so the
        producer closes at once; the batch they came from has no stored offset and is read again."""
        wait = 0.0 if self.watch.down else min(self.settings.kafka.delivery_timeout_s, CLOSE_TIMEOUT_S)
        if self.sink.flush(wait):
            log.warning("outputs_dropped_at_shutdown", outputs=self.sink.drop_pending())

    def _keep_polling(self, work: Callable[[], T]) -> T:
        """Run long work (a warm-up fit) in a thread while the consumer, paused, keeps its group membership."""
        self.source.pause()
        try:
            with ThreadPoolExecutor(1, thread_name_prefix="streammoe-work") as pool:
                future = pool.submit(work)
                while not future.done():
                    self._carry += self.source.poll_paused(0.2)
                    self.health.progress(len(self.source.assigned))
                return future.result()
        finally:
            self.source.resume()

    def _shutdown(self, failed: bool) -> None:
        """Flush, checkpoint, commit and leave the group, in bounded time even while the broker is unreachable.

        Only batches whose outputs were acknowledged have stored offsets, so whatever commits here was
        acknowledged, after a failure too. During an outage nothing is committed: the acknowledged but
        uncommitted batches are read again after the restart (at-least-once)."""
        steps: list[tuple[str, Callable[[], object]]] = [
            ("flush", self._final_flush), ("checkpoint", self._checkpoint), ("snapshot", self._snapshot),
            ("close", self._close_source), ("close_control", self.control.close), ("close_snapshots", self.scopes.close),
        ]
        for name, step in steps:
            try:
                step()
            except Exception as e:  # keep shutting down; the first error is what the caller sees
                log.error("shutdown_step_failed", step=name, error=str(e))
        if self.http is not None:
            self.http.stop()
        self._judge_pool.shutdown(wait=False)
        s = self.summary
        log.info("daemon_stopped", failed=failed, records=s.records_in, alerts=s.alerts, non_alerts=s.non_alerts,
                 dead_letters=s.dead_letters, warmup=s.warmup, batches=s.batches, seconds=round(s.seconds, 2),
                 stage_seconds=self.metrics.stage_totals(),
                 committed={f"{t}[{p}]": o for (t, p), o in sorted(self.source.committed.items())})

    def _apply_control(self) -> None:
        """Apply operator verdicts from the control topic to this scope's model (see streammoe/control.py).

        The control topic's positions live in the model state beside the input offsets, so a verdict is applied
        once per model and re-applied to an older model restored from a checkpoint that predates it."""
        topic = self.control.topic
        if not self.control.assigned:
            if time.monotonic() < self._control_retry_at:
                return
            self._control_retry_at = time.monotonic() + 5.0
            if not self.control.start(self._control_positions()):
                return
        for m in self.control.poll():
            held = [s for s in self.models.values() if not s.already_learned(topic, m.partition(), m.offset())]
            if not held:
                continue
            try:
                verdict = parse_command(m.value())
                state = next((s for s in held if s.scope == verdict.scope), None)
                if state is not None:
                    self._apply_verdict(state, verdict, m)
            except ControlError as e:
                self.sink.dead_letter(m.value(), m.key(), topic, m.partition(), m.offset(), "bad_control", str(e))
                self.metrics.dead_letters.labels("bad_control").inc()
                log.warning("control_rejected", reason=str(e), partition=m.partition(), offset=m.offset())
            for s in held:
                s.advance(topic, m.partition(), m.offset() + 1)

    def _apply_verdict(self, state: ModelState, verdict: ExpertVerdict, m: Message) -> None:
        if state.detector is None:
            raise ControlError("the scope has no model yet (warming up)")
        try:
            state.detector.mark_expert(verdict.expert, verdict.status)
        except ValueError as e:
            raise ControlError(str(e)) from None
        event = marked_event(verdict, self.control.topic, m.partition(), m.offset())
        self.sink.send(self.settings.kafka.events_topic,
                       orjson.dumps(self._event_payload(event, state.scope, state.version)), state.scope.encode())
        self.metrics.mode_events.labels("mode_marked").inc()
        log.info("expert_marked", scope=state.scope, expert=verdict.expert, status=verdict.status,
                 operator=verdict.operator)

    def _control_positions(self) -> dict[int, int]:
        """Where to start reading the control topic: the earliest position any held scope has not yet seen."""
        start: dict[int, int] = {}
        held = list(self.models.values())
        for state in held:
            for p, o in state.learned_offsets.get(self.control.topic, {}).items():
                start[p] = min(o, start.get(p, o))
        return {p: o for p, o in start.items()
                if all(p in s.learned_offsets.get(self.control.topic, {}) for s in held)}

    def _lag(self, topic: str, partition: int, lag: int) -> None:
        self.metrics.consumer_lag.labels(topic, str(partition)).set(lag)


def event_payload(event: dict, *, input_topic: str, scope: str, model_version: str) -> dict:
    """An event for the events topic (schemas/event.schema.json): packed refs become `{topic, partition, offset}`."""
    for end in ("first", "last"):
        ref = event.pop(f"{end}_ref", None)
        event[f"{end}_source"] = None if ref is None else {
            "topic": input_topic,
            "partition": ref >> REF_PARTITION_SHIFT,
            "offset": ref & ((1 << REF_PARTITION_SHIFT) - 1),
        }
    return {**event, "scope": scope, "model_version": model_version}


def marked_event(verdict: ExpertVerdict, topic: str, partition: int, offset: int) -> dict:
    """The `mode_marked` event for an applied operator verdict, before `event_payload`."""
    return {"kind": "mode_marked", "expert": verdict.expert, "status": verdict.status,
            "operator": verdict.operator, "note": verdict.note,
            "control_source": {"topic": topic, "partition": partition, "offset": offset}}


def tune_allocator() -> None:
    """Keep freed scoring buffers in the heap instead of returning them to the OS after every batch.

    Each batch allocates the same large intermediates; with glibc's defaults they are mmap'd and unmapped
    every time and the page faults dominate on a busy CPU (PLATFORM.md measured up to 2.7x). The same
    as GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...:glibc.malloc.trim_threshold=..., set from inside."""
    if os.environ.get("GLIBC_TUNABLES") or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)  # glibc's ceiling for this knob on 64-bit
    libc.mallopt(m_trim_threshold, 1 << 30)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.env_file)
    except SettingsError as e:
        for line in str(e).splitlines():
            print(f"streammoe run: invalid setting: {line}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    tune_allocator()
    log.info("settings", **settings.safe_dump())
    try:
        Daemon(settings, install_signals=True).run()
    except (ModelLoadError, DeliveryError, KafkaException) as e:
        log.error("daemon_failed", error=str(e), kind=type(e).__name__)
        return 1
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("run", help="run the streaming daemon (settings from STREAMMOE_* variables)")
    p.add_argument("--env-file", default=None, help="an env file of STREAMMOE_* settings (see configs/)")
    p.set_defaults(func=cmd_run)
