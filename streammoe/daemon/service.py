"""`streammoe run`: the loop that wires source → decode → score → learn → publish → acknowledge → commit.

The loop is a few lines over named parts, one module per duty:

    pipeline.py   decode, route to scopes, score and learn (the read-ahead thread, backpressure)
    publish.py    judged batch -> dead letters, scores, alerts, mode and drift events -> sink
    incidents.py  each scope's judged rows -> its incidents (opened, updated, resolved) -> sink
    silences.py   assets gone silent or back -> asset_silent / asset_resumed events
    delivery.py   wait for the broker's acknowledgements, outages, store offsets; commit -> checkpoint -> snapshot
    shutdown.py   settle, flush, checkpoint, snapshot, leave the group, close: in bounded time
    rebalance.py  partitions assigned, revoked or lost -> the model scopes this worker holds
    verdicts.py   control topic -> operator verdicts on experts
    inbox.py      the loop's one buffer of fetched messages (rebalances may only drop partitions from it)
    warmup.py     the records a scope without a model collects for its first fit
    clients.py    the broker clients as the loop sees them (Kafka ones by default, fakes in unit tests)
    accounting.py the run summary and what each stage and each learning step tells the metrics

Records are routed by asset to model scopes (`OwnedScopes`: one global model by default, or one per asset or asset
group); a scope follows its input partition between workers of the group through the snapshot topic.

SIGTERM/SIGINT stop polling; the batch in flight finishes, outputs are flushed, offsets committed, the
model checkpointed, and the process exits 0.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import threading
import time
from itertools import count

import structlog
import torch
from confluent_kafka import KafkaException, Message

from streammoe import heartbeat
from streammoe.config import Settings, SettingsError, load_settings
from streammoe.daemon.accounting import RunSummary, timed
from streammoe.daemon.clients import Clients, KafkaClients, SourceHooks
from streammoe.daemon.delivery import BatchAbandoned, Commits, Delivery, OutageProbe
from streammoe.daemon.inbox import Inbox
from streammoe.daemon.incidents import IncidentPublisher
from streammoe.daemon.pipeline import JudgeThread, Pipeline
from streammoe.daemon.publish import Publisher
from streammoe.daemon.rebalance import Rebalance, ScopeEvents
from streammoe.daemon.shutdown import shut_down
from streammoe.daemon.silences import Silences
from streammoe.daemon.verdicts import Verdicts
from streammoe.daemon.warmup import WarmUp
from streammoe.kafka.outage import BrokerWatch
from streammoe.kafka.sink import DeliveryError
from streammoe.kafka.source import positions
from streammoe.logs import configure_logging, get_logger
from streammoe.metrics import Health, HttpServer, Metrics
from streammoe.silence import SilenceWatch
from streammoe.state.checkpoint import Checkpointer, ModelState
from streammoe.state.errors import ModelLoadError
from streammoe.state.ownership import OwnedScopes
from streammoe.state.scopes import GLOBAL_SCOPE
from streammoe.wire.records import DecodedBatch

log = get_logger("streammoe.daemon")


class Daemon:
    """The service: its parts wired together and the loop over them (the shutdown steps are in shutdown.py).

    `clients` builds the broker clients (default: the Kafka ones); unit tests pass fakes."""

    def __init__(self, settings: Settings, *, clients: Clients | None = None, install_signals: bool = False) -> None:
        self.settings = settings
        self.channels = list(settings.records.channels)
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        self.metrics = Metrics(settings.http.max_scope_series, "cuda" if torch.cuda.is_available() else "cpu")
        self.health = Health(settings.http.ready_stale_s, settings.http.live_stale_s)
        self.stop_heartbeat = heartbeat.listen(self.health.working)  # long steps deep in the model report here
        self.silence = SilenceWatch(settings.silence)
        self.summary = RunSummary()
        self._stop = threading.Event()
        self._batch_ids = count(1)
        self._first_batch_at: float | None = None
        self.inbox = Inbox()
        self.judge_thread = JudgeThread()
        self.checkpointer = Checkpointer(settings.checkpoint, self.channels)
        self.warmup = WarmUp(settings.checkpoint.warmup_records, self.metrics, self.summary)
        events = ScopeEvents(settings, self.warmup, self.metrics, self.health)
        clients = clients if clients is not None else KafkaClients(settings)
        self.scopes = OwnedScopes(
            settings,
            self.checkpointer,
            clients.snapshots(),
            on_restored=events.restored,
            on_dropped=events.dropped,
            on_snapshot=events.snapshot_done,
        )
        if self.scopes.single:  # restored now: an unusable checkpoint stops the daemon before it joins the group
            self.scopes.get(GLOBAL_SCOPE)
        self.watch = BrokerWatch(self.metrics, self.health)
        self.sink = clients.sink(on_error=self.watch.client_error)
        self.control = clients.control(on_error=self.watch.client_error)
        self.outage = OutageProbe(self.sink, self.watch)
        self.rebalance = Rebalance(
            settings, self.scopes, self.control, self.inbox, self.judge_thread, self.metrics, self.silence
        )
        self.source = clients.source(
            SourceHooks(
                on_assigned=self.rebalance.assigned,
                on_released=self.rebalance.released,
                on_lost=self.outage.partitions_lost,
                on_lag=self._lag,
                on_committed=self.metrics.commits.inc,
                on_error=self.watch.client_error,
            )
        )
        self.pipeline = Pipeline(
            settings,
            self.scopes,
            self.source,
            self.inbox,
            self.judge_thread,
            self.warmup,
            self.metrics,
            self.health,
            self.summary,
            self._stop,
        )
        self.incident_publisher = IncidentPublisher(settings, self.sink, self.scopes.models.get, self.metrics)
        self.publisher = Publisher(settings, self.sink, self.metrics, self.summary, self.incident_publisher)
        self.silences = Silences(self.silence, self.scopes, self.publisher, self.metrics)
        self.delivery = Delivery(
            settings, self.source, self.sink, self.watch, self.inbox, self.metrics, self.health, self._stop
        )
        self.commits = Commits(
            settings, self.source, self.watch, self.checkpointer, self.scopes, self.judge_thread, self.metrics
        )
        self.verdicts = Verdicts(self.control, self.scopes, self.sink, self.publisher, self.judge_thread, self.metrics)
        self.http = (
            HttpServer(settings.http.host, settings.http.port, self.metrics, self.health)
            if settings.http.enabled
            else None
        )
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
        self.inbox.claim()
        if self.http is not None:
            self.http.start()
        log.info(
            "daemon_started",
            input_topic=self.settings.kafka.input_topic,
            scopes=self.settings.scopes.mode,
            model=self.state.version if self.scopes.single else None,
            http_port=self.http.port if self.http else None,
        )
        self.source.subscribe()
        failed = True
        try:
            while not self._stop.is_set():
                if max_records is not None and self.summary.records_in >= max_records:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
                msgs, early = self.inbox.take()
                if not msgs:
                    msgs, early = self.source.poll_batch(), None
                self.health.progress(len(self.source.assigned))
                self.metrics.assigned_partitions.set(len(self.source.assigned))
                if msgs:
                    try:
                        self._handle(msgs, early)
                    except BatchAbandoned:
                        break
                else:
                    self.sink.poll()
                self.outage.probe()
                self.silences.check()
                self.commits.maybe_commit()
                self.incident_publisher.expire()
                self.verdicts.apply()
            failed = False
        finally:
            self.summary.seconds = time.monotonic() - started
            self._shutdown(failed)
        return self.summary

    def _handle(self, msgs: list[Message], early: DecodedBatch | None) -> None:
        """One batch: decode, route, judge, publish, acknowledge (`early`: decoded while it was read ahead)."""
        t0 = time.monotonic()
        if self._first_batch_at is None:
            self._first_batch_at = t0
        with structlog.contextvars.bound_contextvars(batch=next(self._batch_ids), records=len(msgs)):
            with timed(self.metrics, "decode"):
                self.metrics.records_in.inc(len(msgs))
                self.summary.records_in += len(msgs)
                decoded = self.pipeline.decode(msgs, early)
            at = positions(msgs)
            routes = self.pipeline.route(decoded, at)
            judged = self.pipeline.judge_batch(msgs, decoded, routes, at)
            with timed(self.metrics, "publish"):
                self.publisher.publish(msgs, decoded, judged, at)
                self.silences.seen(decoded, at.partitions[decoded.index])
            with timed(self.metrics, "acknowledge"):
                waited = self.delivery.acknowledge(msgs, at)
            elapsed = time.monotonic() - t0
            self.metrics.batch_seconds.observe(elapsed)
            self.metrics.batch_size.observe(len(msgs))
            if not waited and elapsed * 1000 > self.settings.kafka.max_poll_interval_ms / 4:
                log.warning("slow_batch", seconds=round(elapsed, 3), hint="lower STREAMMOE_BATCHING__MAX_BATCH")
            log.debug("batch_done", seconds=round(elapsed, 4), dead=len(decoded.dead))
        self.summary.batches += 1
        self.summary.busy_seconds = time.monotonic() - self._first_batch_at

    def _shutdown(self, failed: bool) -> None:
        """The shutdown steps (shutdown.py), after the loop ended or failed."""
        shut_down(self, failed)

    def _lag(self, topic: str, partition: int, lag: int) -> None:
        self.metrics.consumer_lag.labels(topic, str(partition)).set(lag)


def tune_allocator() -> None:
    """Keep freed scoring buffers in the heap instead of returning them to the OS after every batch.

    Each batch allocates the same large intermediates; with glibc's defaults they are mmap'd and unmapped
    every time and the page faults dominate on a busy CPU (measured: up to 2.7x on a 2-core box). The same
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
