"""Decoded batch -> each scope's rows -> scored and learned -> a judged batch, with the read-ahead thread.

With a model for every scope of a batch, the batch is judged in a worker thread (`JudgeThread`) while the loop
fetches and decodes the next one, at most one batch ahead (it waits in the `Inbox`). Batches are still judged,
published and acknowledged one at a time and in order, and offsets are stored only after a batch's outputs are
acknowledged. Everything else that touches a model (verdicts, checkpoints, snapshots, warm-up fits) runs on the
loop's thread while no batch is being judged: `JudgeThread.require_idle` and `require_loop_thread` raise when
that is broken. Torch releases the GIL in its kernels, so on two cores the fetch and decode of the next batch
mostly hide behind scoring.

Backpressure: a batch judged for longer than PAUSE_AFTER_S (a candidate expert being trained, a slow CPU) pauses
the partitions; the consumer is then polled only to keep the group membership, so nothing more is fetched.
"""

from __future__ import annotations

import contextvars
import math
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from confluent_kafka import Message

from streammoe.config import Settings
from streammoe.daemon.accounting import RunSummary, account_learning, timed
from streammoe.daemon.clients import SourceClient
from streammoe.daemon.inbox import Inbox
from streammoe.daemon.warmup import WarmUp
from streammoe.kafka.source import Positions
from streammoe.logs import get_logger
from streammoe.metrics import Health, Metrics
from streammoe.model.detector import LearnReport, MixtureDetector, ScoredBatch
from streammoe.state.checkpoint import ModelState
from streammoe.state.ownership import OwnedScopes
from streammoe.wire.identity import expert_ids
from streammoe.wire.records import DecodedBatch, RecordDecoder

log = get_logger("streammoe.daemon")

T = TypeVar("T")
REF_PARTITION_SHIFT = 40  # model refs pack (partition << 40) | offset, unpacked again in mode events
PAUSE_AFTER_S = 1.0  # pipelined: a batch judged for longer than this pauses the partitions until it is done

Routes = list[tuple[ModelState, np.ndarray]]


class ThreadRuleBroken(RuntimeError):
    """Model work ran on a thread or at a time the loop's design forbids (a bug, never a broker condition)."""


@dataclass
class Part:
    """Rows of a decoded batch scored by one scope's model, with what their outputs need to say about it (taken
    when judged: the scope may be handed to another worker before the outputs are published)."""

    scope: str
    scored: ScoredBatch
    rows: np.ndarray
    version: str
    expert_status: dict[int, str]
    expert_ids: dict[int, str] = field(default_factory=dict)  # slot -> the expert's own id (wire/identity.py)


@dataclass
class Judged:
    """What the models said about a decoded batch: scored parts, warm-up rows, and what each scope learned."""

    parts: list[Part] = field(default_factory=list)
    warmup_rows: int = 0
    learned: list[tuple[str, str, LearnReport]] = field(default_factory=list)  # scope, model version, report
    drifts: list[tuple[str, str, dict]] = field(default_factory=list)  # scope, model version, likelihood_drift event
    learned_ids: dict[str, dict[int, str]] = field(default_factory=dict)  # scope -> slot -> expert id, after learning


class JudgeThread:
    """The one worker thread that judges a batch while the loop reads ahead; knows whether it is busy."""

    def __init__(self) -> None:
        self._ident: int | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="streammoe-judge", initializer=self._started)
        self.in_flight: Future[Judged] | None = None

    def _started(self) -> None:
        self._ident = threading.get_ident()

    def on_it(self) -> bool:
        """Whether the caller runs on the judge thread."""
        return self._ident is not None and threading.get_ident() == self._ident

    def submit(self, fn: Callable[..., Judged], *args: Any) -> Future[Judged]:
        self.require_idle("judging a batch")
        future = self.in_flight = self._pool.submit(contextvars.copy_context().run, fn, *args)
        return future

    def result(self, future: Future[Judged], timeout: float | None) -> Judged:
        result = future.result(timeout=timeout)
        self.in_flight = None
        return result

    def wait_idle(self) -> None:
        """Let the batch being judged finish (its result or error is collected by the loop)."""
        if self.in_flight is not None:
            wait([self.in_flight])

    def require_idle(self, what: str) -> None:
        """Raise unless no batch is being judged: `what` touches the models the judge thread uses."""
        if self.in_flight is not None and not self.in_flight.done():
            raise ThreadRuleBroken(f"{what} while a batch is being judged: it must run between batches")

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False)


class Pipeline:
    """Decode, route and judge a batch; the loop then publishes the `Judged` and acknowledges it."""

    def __init__(
        self,
        settings: Settings,
        scopes: OwnedScopes,
        source: SourceClient,
        inbox: Inbox,
        judge_thread: JudgeThread,
        warmup: WarmUp,
        metrics: Metrics,
        health: Health,
        summary: RunSummary,
        stopped: threading.Event,
    ) -> None:
        self.settings = settings
        self.channels = list(settings.records.channels)
        self.decoder = RecordDecoder(settings.records)
        self.scopes, self.source, self.inbox = scopes, source, inbox
        self.judge_thread, self.warmup = judge_thread, warmup
        self.metrics, self.health, self.summary, self.stopped = metrics, health, summary, stopped

    def decode(self, msgs: list[Message], early: DecodedBatch | None = None) -> DecodedBatch:
        """The batch's records decoded (`early`: already decoded while it was read ahead)."""
        return early if early is not None else self.decoder.decode([m.value() for m in msgs])

    def route(self, decoded: DecodedBatch, at: Positions) -> Routes:
        """Each scope's state with the decoded rows that belong to it (restored on its first record)."""
        return [
            (self.scopes.get(scope), rows)
            for scope, rows in self.scopes.route(decoded.assets, at.partitions[decoded.index])
        ]

    def judge_batch(self, msgs: list[Message], decoded: DecodedBatch, routes: Routes, at: Positions) -> Judged:
        """Read ahead only when every scope has a model: a warm-up fit polls the consumer itself."""
        if self.settings.batching.pipeline and all(state.detector is not None for state, _ in routes):
            return self._judge_reading_ahead(msgs, decoded, routes, at)
        return self.judge(msgs, decoded, routes, at)

    def _judge_reading_ahead(self, msgs: list[Message], decoded: DecodedBatch, routes: Routes, at: Positions) -> Judged:
        """Judge the batch in the judge thread while this one fetches and decodes the next batch."""
        future = self.judge_thread.submit(self.judge, msgs, decoded, routes, at)
        if not len(self.inbox) and not self.stopped.is_set():
            with timed(self.metrics, "read_ahead"):
                ahead = self.source.poll_batch()
                if ahead:
                    self.inbox.read_ahead(ahead, self.decoder.decode([m.value() for m in ahead]))
                    self.summary.read_ahead += 1
        try:
            return self.judge_thread.result(future, PAUSE_AFTER_S)
        except FutureTimeout:
            pass
        self.metrics.backpressure_pauses.inc()
        log.info("backpressure_pause", hint="judging a batch took longer than the pause threshold")
        self.poll_paused_until(future, 0.1)
        return self.judge_thread.result(future, None)

    def poll_paused_until(self, future: Future[Any], step_s: float) -> None:
        """Pause the partitions and poll only to keep the group membership until `future` is done."""
        require_loop_thread(self.judge_thread, "polling the consumer")
        self.source.pause()
        try:
            while not future.done():
                self.inbox.add(self.source.poll_paused(step_s))
                self.health.progress(len(self.source.assigned))
        finally:
            self.source.resume()

    def keep_polling(self, work: Callable[[], T]) -> T:
        """Run long work (a warm-up fit) in a thread while the consumer, paused, keeps its group membership."""
        with ThreadPoolExecutor(1, thread_name_prefix="streammoe-work") as pool:
            future = pool.submit(work)
            self.poll_paused_until(future, 0.2)
            return future.result()

    def judge(self, msgs: list[Message], decoded: DecodedBatch, routes: Routes, at: Positions) -> Judged:
        """Score each scope's rows with what it learned before this batch, then learn from them (never from what
        they flag). Rows of a scope still warming up are collected for its first fit instead."""
        judged = Judged()
        topic, partitions, offsets = at
        assets = np.asarray(decoded.assets, dtype=str)  # once per batch, not per scope
        for state, rows in routes:
            if state.detector is None:
                judged.warmup_rows += len(rows)
                whole = complete(decoded, rows, self.metrics)
                self._warm_up(state, decoded.values[whole], assets[whole], decoded.ts[whole])
            elif len(rows):
                self._score_and_learn(
                    state,
                    state.detector,
                    judged,
                    decoded,
                    rows,
                    assets,
                    topic,
                    partitions[decoded.index[rows]],
                    offsets[decoded.index[rows]],
                )
            if self.scopes.single:  # the one model has seen every record of the batch, dead letters too
                advance(state, topic, partitions, offsets)
            elif len(rows):
                advance(state, topic, partitions[decoded.index[rows]], offsets[decoded.index[rows]])
        self.scopes.judged.batch(partitions, offsets)  # here, not after: a revoke waits for this, then forgets it
        return judged

    def _warm_up(
        self, state: ModelState, values: np.ndarray, assets: np.ndarray | None = None, ts: np.ndarray | None = None
    ) -> None:
        """Collect a scope's first records (with assets and ts: the context); then fit its first model, polling."""
        require_loop_thread(self.judge_thread, "a warm-up fit")
        fit = self.warmup.collect(state.scope, values, assets, ts)
        if fit is None:
            return
        detector = MixtureDetector(len(self.channels), self.settings.model, self.channels)
        log.info("warmup_fit_started", scope=state.scope, records=len(fit.values))
        gap = self.settings.model.context.gap_ms
        report = self.keep_polling(
            lambda: detector.fit(fit.values, assets=fit.assets, times=fit.ts.astype(np.float64), max_gap=gap)
        )
        state.detector = detector
        log.info("warmup_fit_done", scope=state.scope, experts=report.k_selected, weights=report.weights)
        account_learning(self.metrics, state, None)

    def _score_and_learn(
        self,
        state: ModelState,
        detector: MixtureDetector,
        judged: Judged,
        decoded: DecodedBatch,
        rows: np.ndarray,
        assets: np.ndarray,
        topic: str,
        partitions: np.ndarray,
        offsets: np.ndarray,
    ) -> None:
        detector.accelerate(self.settings.torch_compile, self.settings.precision)  # restored or fitted, same way
        learned_to = state.learned_offsets.get(topic, {})
        fresh = offsets >= np.array([learned_to.get(int(p), 0) for p in range(int(partitions.max()) + 1)])[partitions]
        refs = (partitions << REF_PARTITION_SHIFT) | offsets
        report = None
        for part, learn in ((np.flatnonzero(~fresh), False), (np.flatnonzero(fresh), True)):
            if not len(part):
                continue
            batch_rows = rows[part]
            with timed(self.metrics, "score"):
                scored = detector.score_many(
                    decoded.values[batch_rows],
                    refs=refs[part],
                    timestamps=decoded.ts[batch_rows],
                    missing=decoded.missing_rows(batch_rows),
                    assets=assets[batch_rows],
                    times=decoded.ts[batch_rows].astype(np.float64),
                    max_gap=detector.config.context.gap_ms,
                    update_context=learn,  # records re-read after a restart are in the context already
                )
            count_unlearned(self.metrics, scored)
            if learn:
                with timed(self.metrics, "learn"):
                    report = detector.learn_many(scored)
            status = detector.expert_status()
            judged.parts.append(
                Part(
                    state.scope,
                    scored,
                    batch_rows,
                    state.version,
                    status,
                    expert_ids(state.lineage, detector.model.born.tolist(), status),
                )
            )
        if report is not None:
            judged.learned.append((state.scope, state.version, report))
            if report.events:  # the experts the events name, as they are now (an added one has its birth point)
                judged.learned_ids[state.scope] = expert_ids(
                    state.lineage, detector.model.born.tolist(), range(len(detector.model.born))
                )
            if report.drift:
                level = float(detector.drift.detector.estimation)
                judged.drifts.append(
                    (
                        state.scope,
                        state.version,
                        {
                            "kind": "likelihood_drift",
                            "detections": int(detector.counters["drifts"]),
                            "level": round(level, 4) if math.isfinite(level) else None,
                        },
                    )
                )
            account_learning(self.metrics, state, report)


def count_unlearned(metrics: Metrics, scored: ScoredBatch) -> None:
    """Records the model scored but must not learn from: alerted (reason non_finite or out_of_range), or
    scored on the channels present (missing channels; alerted only when their score says so)."""
    partial = int((scored.valid & scored.partial).sum())
    if partial:
        metrics.partial_records.labels("scored").inc(partial)
    counts = {
        "non_finite_score": int((~scored.valid).sum()),
        "out_of_range": int((scored.valid & ~scored.in_range).sum()),
    }
    for reason, n in counts.items():
        if n:
            metrics.poison_records.labels(reason).inc(n)
    if any(counts.values()):
        log.warning("poison_records", **counts)


def complete(decoded: DecodedBatch, rows: np.ndarray, metrics: Metrics) -> np.ndarray:
    """The `rows` that miss no channel: a first fit learns only from complete records (the others are counted,
    as scored records with missing channels are)."""
    missing = decoded.missing_rows(rows)
    if missing is None:
        return rows
    partial = missing.any(axis=1)
    metrics.partial_records.labels("warmup").inc(int(partial.sum()))
    return rows[~partial]


def advance(state: ModelState, topic: str, partitions: np.ndarray, offsets: np.ndarray) -> None:
    """Learned now, or part of the warm-up fit: never to be learned again by this model."""
    for p in np.unique(partitions):
        state.advance(topic, int(p), int(offsets[partitions == p].max()) + 1)


def require_loop_thread(judge_thread: JudgeThread, what: str) -> None:
    """Raise if `what` runs on the judge thread: it polls the consumer, which only the loop's thread may do."""
    if judge_thread.on_it():
        raise ThreadRuleBroken(
            f"{what} on the judge thread: it polls the consumer, so only the loop's thread may "
            "run it (a batch with a scope still warming up is judged on the loop's thread)"
        )
