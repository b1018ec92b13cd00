"""Prometheus metrics and the HTTP endpoints operators probe: /metrics, /healthz, /readyz.

/metrics is prometheus_client's own handler (gzip when asked, OpenMetrics when the scraper asks for it, `name[]`
filters); /healthz and /readyz are the daemon's. Besides the daemon's metrics the registry carries
prometheus_client's process, platform and GC collectors and `streammoe_build_info`.
"""

from __future__ import annotations

import platform
import threading
import time
from functools import partial
from http.server import ThreadingHTTPServer
from importlib import metadata

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import MetricsHandler

OTHER_SCOPES = "_other"


def build_labels(device: str) -> dict[str, str]:
    """What an operator asks first about a misbehaving worker: which streammoe, torch and librdkafka it runs, and
    on what (versions read from package metadata: this module must not import torch)."""
    import confluent_kafka

    from streammoe import __version__

    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "none"
    return {
        "version": __version__,
        "python": platform.python_version(),
        "torch": torch_version,
        "librdkafka": confluent_kafka.libversion()[0],
        "device": device,
    }


class Metrics:
    """One registry per daemon, so several daemons (tests) never share counters."""

    def __init__(self, max_scope_series: int = 100, device: str = "cpu") -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        Info("streammoe_build", "The running streammoe: versions and the device it scores on.", registry=r).info(
            build_labels(device)
        )
        counter = partial(Counter, registry=r)  # every metric of this daemon goes in its own registry
        gauge = partial(Gauge, registry=r)
        histogram = partial(Histogram, registry=r)
        self.max_scope_series = max_scope_series
        self._scopes_with_series: set[str] = set()
        self.records_in = counter("streammoe_records_in", "Input records consumed.")
        self.dead_letters = counter("streammoe_dead_letters", "Records dead-lettered, by reason.", ["reason"])
        self.control_skipped = counter(
            "streammoe_control_skipped",
            "Control commands skipped, not dead-lettered, by reason (before_model: on an incident of an earlier "
            "model, sent before this model's lineage began).",
            ["reason"],
        )
        self.alerts = counter("streammoe_alerts", "Alerts published, by severity.", ["severity"])
        self.non_alerts = counter("streammoe_non_alerts", "Valid records that raised no alert (incl. warm-up).")
        self.warmup_records = counter("streammoe_warmup_records", "Records learned during warm-up, unscored.")
        self.batch_seconds = histogram(
            "streammoe_batch_seconds",
            "From consume to acknowledged outputs, per batch.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.stage_seconds = histogram(
            "streammoe_stage_seconds",
            "Time per batch in each stage of the loop.",
            ["stage"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )
        self.batch_size = histogram(
            "streammoe_batch_records", "Records per batch.", buckets=(1, 16, 64, 256, 1024, 4096, 16384)
        )
        self.consumer_lag = gauge(
            "streammoe_consumer_lag", "Records behind the end, per partition.", ["topic", "partition"]
        )
        self.experts_active = gauge("streammoe_experts_active", "Active experts in the mixture.", ["scope"])
        self.mixture_weight = gauge("streammoe_mixture_weight", "Mixture weight per expert slot.", ["scope", "expert"])
        self.learn_steps_skipped = counter(
            "streammoe_learn_steps_skipped", "Online learning steps skipped, by reason.", ["reason"]
        )
        self.poison_records = counter(
            "streammoe_poison_records", "Records scored as anomalous but kept out of learning, by reason.", ["reason"]
        )
        self.partial_records = counter(
            "streammoe_partial_records",
            "Records with missing channels, never learned: scored on the channels present (stage scored), or "
            "left out of a warm-up fit (stage warmup).",
            ["stage"],
        )
        self.records_learned = counter("streammoe_records_learned", "Records the model learned from.")
        self.mode_events = counter("streammoe_mode_events", "Experts added, retired or merged.", ["kind"])
        self.incidents_opened = counter("streammoe_incidents_opened", "Incidents opened, per scope.", ["scope"])
        self.incidents_resolved = counter(
            "streammoe_incidents_resolved", "Incidents resolved, per scope and how.", ["scope", "by"]
        )
        self.incidents_open = gauge("streammoe_incidents_open", "Incidents open now, per scope.", ["scope"])
        self.drifts = counter(
            "streammoe_likelihood_drifts", "Changes of the stream's typical log-likelihood (ADWIN).", ["scope"]
        )
        self.commits = counter("streammoe_commits", "Offset commits that succeeded.")
        self.checkpoints = counter("streammoe_checkpoints", "Model checkpoints written.")
        self.checkpoint_fallbacks = counter(
            "streammoe_checkpoint_fallbacks",
            "Starts that loaded the previous checkpoint generation, by reason.",
            ["reason"],
        )
        self.assigned_partitions = gauge("streammoe_assigned_partitions", "Input partitions owned.")
        self.scopes_held = gauge("streammoe_scopes_held", "Model scopes this worker holds.")
        self.snapshots = counter("streammoe_snapshots", "Scope snapshots written to the snapshot topic.")
        self.snapshot_failures = counter("streammoe_snapshot_failures", "Scope snapshots that failed.")
        self.snapshot_repositions = counter(
            "streammoe_snapshot_repositions", "Quiet scopes' snapshots moved on to how far their partition was judged."
        )
        self.scopes_restored = counter("streammoe_scopes_restored", "Scopes taken over, by origin.", ["origin"])
        self.backpressure_pauses = counter(
            "streammoe_backpressure_pauses", "Times the partitions were paused because judging a batch took long."
        )
        self.broker_unreachable = gauge(
            "streammoe_broker_unreachable", "1 while the broker is unreachable (the daemon waits, not ready)."
        )
        self.broker_outages = counter("streammoe_broker_outages", "Broker outages begun.")
        self.outputs_resent = counter(
            "streammoe_outputs_resent", "Outputs sent again after the broker failed to acknowledge them."
        )

        self.asset_silences = counter("streammoe_asset_silences", "Assets that went silent (asset_silent events).")
        self.scopes_without_series = gauge(
            "streammoe_scopes_without_series",
            "Scopes held whose per-scope gauges are not exported (beyond "
            "STREAMMOE_HTTP__MAX_SCOPE_SERIES; asset mode can hold thousands).",
        )

    def scope_series(self, scope: str) -> bool:
        """Whether `scope` gets its own experts_active and mixture_weight series: the first
        `max_scope_series` scopes held do, the rest are counted in streammoe_scopes_without_series, so a worker
        holding thousands of asset scopes keeps /metrics (and Prometheus) small."""
        if scope in self._scopes_with_series:
            return True
        if len(self._scopes_with_series) < self.max_scope_series:
            self._scopes_with_series.add(scope)
            return True
        return False

    def held_scopes(self, scopes: int) -> None:
        self.scopes_held.set(scopes)
        self.scopes_without_series.set(max(0, scopes - len(self._scopes_with_series)))

    def forget_scope(self, scope: str, k_max: int) -> None:
        """A scope another worker owns now: its series here would only mislead (and its slot is free again)."""
        self._scopes_with_series.discard(scope)
        for gauge, labels in (
            (self.experts_active, [(scope,)]),
            (self.incidents_open, [(scope,)]),
            (self.mixture_weight, [(scope, str(k)) for k in range(k_max)]),
        ):
            for label in labels:
                try:
                    gauge.remove(*label)
                except KeyError:
                    pass

    def forget_partitions(self, topic: str, partitions: list[int]) -> None:
        """Partitions revoked or lost: their lag is the new owner's to report (else sums double-count)."""
        for p in partitions:
            try:
                self.consumer_lag.remove(topic, str(p))
            except KeyError:
                pass

    def stage_totals(self) -> dict[str, float]:
        """Seconds spent so far in each stage (for benchmarks and the shutdown summary)."""
        return {
            s.labels["stage"]: round(s.value, 3)
            for metric in self.stage_seconds.collect()
            for s in metric.samples
            if s.name.endswith("_sum")
        }

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Health:
    """Liveness: the main loop turned (or a known long step reported progress) within `live_stale_s`, so a stuck
    worker is restarted and a busy one is not. Readiness also needs a reachable broker, partitions and a loop
    that turned within `stale_s`."""

    def __init__(self, stale_s: float, live_stale_s: float = 300.0) -> None:
        self.stale_s = stale_s
        self.live_stale_s = live_stale_s
        self.assigned = 0
        self.last_progress = 0.0
        self.last_alive = time.monotonic()  # start-up counts as alive until the loop's first turn is due
        self.step = "starting"
        self.outage: str | None = None

    def progress(self, assigned: int) -> None:
        """The main loop turned."""
        self.assigned, self.last_progress = assigned, time.monotonic()
        self.last_alive, self.step = self.last_progress, "loop"

    def working(self, step: str) -> None:
        """A known long step (restoring snapshots, training a candidate expert, a warm-up fit) is progressing:
        alive, though the loop has not turned (readiness is not touched)."""
        self.last_alive, self.step = time.monotonic(), step

    def broker_unreachable(self, reason: str | None) -> None:
        """Not ready while `reason` is set (a broker outage in progress); None when it is over."""
        self.outage = reason

    def live(self) -> tuple[bool, str]:
        age = time.monotonic() - self.last_alive
        if age > self.live_stale_s:
            return False, f"stalled: no progress for {age:.0f} s (last step: {self.step})"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        if self.outage is not None:
            return False, f"broker unreachable: {self.outage}"
        if self.assigned == 0:
            return False, "no partitions assigned"
        age = time.monotonic() - self.last_progress
        if age > self.stale_s:
            return False, f"no progress for {age:.0f} s"
        return True, "ok"


class HttpServer:
    """A small threaded server: prometheus_client's handler for /metrics, ours for /healthz and /readyz."""

    def __init__(self, host: str, port: int, metrics: Metrics, health: Health) -> None:
        class Handler(MetricsHandler):
            registry = metrics.registry

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    super().do_GET()
                elif path in ("/healthz", "/readyz"):
                    ok, why = health.live() if path == "/healthz" else health.ready()
                    self._plain(200 if ok else 503, why.encode() + b"\n")
                else:
                    self._plain(404, b"not found\n")

            def _plain(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="streammoe-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
