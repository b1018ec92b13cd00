"""Prometheus metrics and the HTTP endpoints operators probe: /metrics, /healthz, /readyz."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    """One registry per daemon, so several daemons (tests) never share counters."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.records_in = Counter("streammoe_records_in", "Input records consumed.", registry=r)
        self.dead_letters = Counter("streammoe_dead_letters", "Records dead-lettered, by reason.", ["reason"], registry=r)
        self.alerts = Counter("streammoe_alerts", "Alerts published, by severity.", ["severity"], registry=r)
        self.non_alerts = Counter("streammoe_non_alerts", "Valid records that raised no alert (incl. warm-up).", registry=r)
        self.warmup_records = Counter("streammoe_warmup_records", "Records learned during warm-up, unscored.", registry=r)
        self.batch_seconds = Histogram(
            "streammoe_batch_seconds", "From consume to acknowledged outputs, per batch.", registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.stage_seconds = Histogram(
            "streammoe_stage_seconds", "Time per batch in each stage of the loop.", ["stage"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )
        self.batch_size = Histogram(
            "streammoe_batch_records", "Records per batch.", registry=r, buckets=(1, 16, 64, 256, 1024, 4096, 16384)
        )
        self.consumer_lag = Gauge("streammoe_consumer_lag", "Records behind the end, per partition.",
                                  ["topic", "partition"], registry=r)
        self.experts_active = Gauge("streammoe_experts_active", "Active experts in the mixture.", ["scope"], registry=r)
        self.mixture_weight = Gauge("streammoe_mixture_weight", "Mixture weight per expert slot.",
                                    ["scope", "expert"], registry=r)
        self.learn_steps_skipped = Counter("streammoe_learn_steps_skipped", "Online learning steps skipped, by reason.",
                                           ["reason"], registry=r)
        self.poison_records = Counter(
            "streammoe_poison_records", "Records scored as anomalous but kept out of learning, by reason.", ["reason"],
            registry=r,
        )
        self.records_learned = Counter("streammoe_records_learned", "Records the model learned from.", registry=r)
        self.mode_events = Counter("streammoe_mode_events", "Experts added, retired or merged.", ["kind"], registry=r)
        self.drifts = Counter("streammoe_likelihood_drifts", "Changes of the stream's typical log-likelihood (ADWIN).",
                              ["scope"], registry=r)
        self.commits = Counter("streammoe_commits", "Offset commits that succeeded.", registry=r)
        self.checkpoints = Counter("streammoe_checkpoints", "Model checkpoints written.", registry=r)
        self.checkpoint_fallbacks = Counter(
            "streammoe_checkpoint_fallbacks", "Starts that loaded the previous checkpoint generation, by reason.",
            ["reason"], registry=r,
        )
        self.assigned_partitions = Gauge("streammoe_assigned_partitions", "Input partitions owned.", registry=r)
        self.scopes_held = Gauge("streammoe_scopes_held", "Model scopes this worker holds.", registry=r)
        self.snapshots = Counter("streammoe_snapshots", "Scope snapshots written to the snapshot topic.", registry=r)
        self.snapshot_failures = Counter("streammoe_snapshot_failures", "Scope snapshots that failed.", registry=r)
        self.scopes_restored = Counter("streammoe_scopes_restored", "Scopes taken over, by origin.", ["origin"],
                                       registry=r)
        self.backpressure_pauses = Counter(
            "streammoe_backpressure_pauses", "Times the partitions were paused because judging a batch took long.",
            registry=r,
        )
        self.broker_unreachable = Gauge("streammoe_broker_unreachable",
                                        "1 while the broker is unreachable (the daemon waits, not ready).", registry=r)
        self.broker_outages = Counter("streammoe_broker_outages", "Broker outages begun.", registry=r)
        self.outputs_resent = Counter("streammoe_outputs_resent",
                                      "Outputs sent again after the broker failed to acknowledge them.", registry=r)

    def stage_totals(self) -> dict[str, float]:
        """Seconds spent so far in each stage (for benchmarks and the shutdown summary)."""
        return {
            s.labels["stage"]: round(s.value, 3)
            for metric in self.stage_seconds.collect() for s in metric.samples if s.name.endswith("_sum")
        }

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Health:
    """Liveness is the process answering; readiness needs a reachable broker, partitions and a loop that turned
    recently."""

    def __init__(self, stale_s: float) -> None:
        self.stale_s = stale_s
        self.assigned = 0
        self.last_progress = 0.0
        self.outage: str | None = None

    def progress(self, assigned: int) -> None:
        self.assigned, self.last_progress = assigned, time.monotonic()

    def broker_unreachable(self, reason: str | None) -> None:
        """Not ready while `reason` is set (a broker outage in progress); None when it is over."""
        self.outage = reason

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
    """A small threaded server; prometheus_client's own would not give us /readyz."""

    def __init__(self, host: str, port: int, metrics: Metrics, health: Health) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    outer._reply(self, 200, metrics.render(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    outer._reply(self, 200, b"ok\n")
                elif path == "/readyz":
                    ok, why = health.ready()
                    outer._reply(self, 200 if ok else 503, why.encode() + b"\n")
                else:
                    outer._reply(self, 404, b"not found\n")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="streammoe-http", daemon=True)

    @staticmethod
    def _reply(handler: BaseHTTPRequestHandler, code: int, body: bytes, ctype: str = "text/plain") -> None:
        handler.send_response(code)
        handler.send_header("Content-Type", ctype)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
