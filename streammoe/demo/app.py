"""`streammoe demo`: the whole pipeline on one machine, with nothing to install or configure.

1. An embedded Tansu broker on a free loopback port (memory storage; killed when the demo ends).
2. A starting model fitted on normal records of the pump's known modes A and B (`training_data()`), saved to
   a temporary directory as the daemon's bootstrap model.
3. The daemon (`streammoe.daemon.Daemon`, in a thread of this process), reading the input topic.
4. A producer thread playing the simulator's default schedule (mode switches, four injected faults, then a
   sustained new mode C) onto the input topic at `--rate` records/s, plus an occasional malformed record.
5. An operator's view: its own consumer of the alerts, events and dead-letter topics, and the daemon's
   /metrics for throughput and the mixture weights; a live `rich` view on a terminal, one line per second
   otherwise (`--no-view`), and a final JSON summary line.

The demo ends when the whole schedule has been scored and its outputs read, at `--duration` seconds after
start, or on Ctrl-C / SIGTERM, whichever comes first. It then stops the producer, the daemon (which flushes,
commits and checkpoints), the readers and the broker, removes its temporary directory, and exits 0 (1 when the
daemon failed). Every alert is matched to the simulator's ground truth by its `ts` (unique per record); the
daemon never sees that truth.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from streammoe.demo.feed import Feed
from streammoe.demo.summary import demo_summary
from streammoe.demo.view import DemoState
from streammoe.demo.watch import Watch
from streammoe.testing.broker import BrokerError

if TYPE_CHECKING:
    from streammoe.config import Settings
    from streammoe.daemon import Daemon, RunSummary
    from streammoe.testing.broker import EmbeddedBroker

DEFAULT_RATE = 120.0  # the default schedule (~8.3k records) plays in about 70 s
TOPICS = {
    "input": "sensor-records",
    "alerts": "streammoe-alerts",
    "events": "streammoe-events",
    "dead": "streammoe-dead-letters",
    "incidents": "streammoe-incidents",
}


@dataclass
class DemoOptions:
    duration: float | None = None
    rate: float = DEFAULT_RATE
    seed: int = 0
    view: bool = True
    summary_json: Path | None = None
    malformed_every: int = 2000
    fit_steps: int = 1000
    torch_threads: int = 1
    scale: int = 1
    log_level: str = "WARNING"
    pid_file: Path | None = None


class Demo:
    """Starts the broker, the starting model, the daemon, the feed and the watch; stops them in order."""

    def __init__(self, opts: DemoOptions) -> None:
        self.opts = opts
        self.state = DemoState()
        self.stop_event = threading.Event()  # Ctrl-C, SIGTERM, or a failing thread
        self.feed = Feed(
            TOPICS["input"],
            self.state,
            rate=opts.rate,
            seed=opts.seed,
            scale=opts.scale,
            malformed_every=opts.malformed_every,
        )
        self.watch = Watch(TOPICS, self.state, self.feed.truth_of)
        self.daemon: Daemon | None = None
        self.daemon_error: BaseException | None = None
        self.daemon_summary: RunSummary | None = None
        self.threads: list[threading.Thread] = []
        self.stopped_by = "?"
        self.failed: str | None = None  # the first thread that died

    # ---- setup ---------------------------------------------------------------------------------------------

    def _settings(self, bootstrap: str, work: Path) -> Settings:
        from streammoe.demo.sensors import CHANNELS
        from streammoe.testing.settings import daemon_settings

        kafka_topics = {role: name for role, name in TOPICS.items() if role != "incidents"}
        return daemon_settings(
            bootstrap,
            kafka_topics,
            CHANNELS,
            group="streammoe-demo",
            checkpoint_dir=work / "checkpoints",
            incidents__topic=TOPICS["incidents"],
            model_dir=work / "model",
            kafka__client_id="streammoe-demo",
            kafka__max_poll_interval_ms=60_000,
            kafka__commit_interval_s=1.0,
            kafka__delivery_timeout_s=15.0,
            checkpoint__interval_s=15.0,
            http__enabled=True,
            http__port=0,
            log_format=None,
            log_level=self.opts.log_level,
        )

    # ---- threads -------------------------------------------------------------------------------------------

    def _start(self, name: str, target: Callable[[], object]) -> None:
        def guarded() -> None:
            try:
                target()
            except BaseException as e:  # noqa: BLE001 - a dying thread stops the demo instead of hanging it
                print(f"streammoe demo: {name} failed: {type(e).__name__}: {e}", file=sys.stderr)
                if name == "daemon":
                    self.daemon_error = e
                self.failed = self.failed or name
                self.stop_event.set()

        t = threading.Thread(target=guarded, name=f"demo-{name}", daemon=True)
        t.start()
        self.threads.append(t)

    def _run_daemon(self, daemon: Daemon) -> None:
        self.daemon_summary = daemon.run()

    def _metrics_port(self) -> int | None:
        http = getattr(self.daemon, "http", None)
        return None if http is None else http.port

    # ---- the run -------------------------------------------------------------------------------------------

    def _finished(self) -> str | None:
        st, opts = self.state, self.opts
        if self.stop_event.is_set():
            return f"{self.failed}_failed" if self.failed else "signal"
        if opts.duration is not None and st.elapsed() >= opts.duration:
            return "duration"
        sent = st.produced + st.malformed_sent
        if st.producer_done and st.scored >= sent and time.monotonic() - self.watch.last_output_at > 2.0:
            return "done"
        return None

    def run(self) -> dict:
        import torch

        from streammoe.daemon import Daemon, tune_allocator
        from streammoe.logs import configure_logging
        from streammoe.testing.broker import EmbeddedBroker

        # One intra-op thread: the demo's own threads share the cores, and torch's spinning workers slow a
        # busy 2-core machine down by an order of magnitude (measured: a 100-step fit 0.3 s vs 10-30 s).
        torch.set_num_threads(max(1, self.opts.torch_threads))
        configure_logging(self.opts.log_level, "auto")
        tune_allocator()
        work = Path(tempfile.mkdtemp(prefix="streammoe-demo-"))
        broker = EmbeddedBroker(log_file=work / "tansu.log")
        fit: dict = {}
        try:
            broker.start()
            self._write_pids(broker)
            create_topics(broker.bootstrap)
            if not self.stop_event.is_set():
                fit = fit_bootstrap(work / "model", self.opts.fit_steps, self.opts.seed)
            if not self.stop_event.is_set():
                daemon = self.daemon = Daemon(self._settings(broker.bootstrap, work))
                self._start("daemon", lambda: self._run_daemon(daemon))
                self._start("reader", lambda: self.watch.read_outputs(broker.bootstrap))
                self._start("metrics", lambda: self.watch.scrape_metrics(self._metrics_port))
                self._start("producer", lambda: self.feed.run(broker.bootstrap))
                self._loop()
            else:
                self.stopped_by = "signal"
        finally:
            self._stop_all()
            broker.stop()
            shutil.rmtree(work, ignore_errors=True)
        return demo_summary(
            self.state,
            self.feed,
            stopped_by=self.stopped_by,
            fit=fit,
            daemon_summary=self.daemon_summary,
            failed=self.failed,
            daemon_error=self.daemon_error,
        )

    def _loop(self) -> None:
        if not self.opts.view:
            self._wait(0.1, lambda: print(self.state.line(), flush=True))
            return
        from rich.live import Live

        from streammoe.demo.view import render

        with Live(get_renderable=lambda: render(self.state), refresh_per_second=4, screen=False) as live:
            self._wait(0.25, lambda: None)
            live.refresh()

    def _wait(self, poll_s: float, every_second: Callable[[], None]) -> None:
        """Until the demo is finished: the rates ticked once a second, then `every_second` (the line view)."""
        next_tick = time.monotonic() + 1.0
        while (reason := self._finished()) is None:
            time.sleep(poll_s)
            if time.monotonic() >= next_tick:
                next_tick += 1.0
                self.state.tick()
                every_second()
        self.stopped_by = reason

    def _stop_all(self) -> None:
        """Producer first, then the daemon (flush, commit, checkpoint), then the readers once outputs are in."""
        by_name = {t.name.removeprefix("demo-"): t for t in self.threads}
        self.feed.stop.set()
        if "producer" in by_name:
            by_name["producer"].join(20)
        if self.daemon is not None:
            self.daemon.stop()
            if "daemon" in by_name:
                by_name["daemon"].join(60)
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 5 and time.monotonic() - self.watch.last_output_at < 1.0:
            time.sleep(0.1)  # let the reader take the daemon's last outputs
        self.watch.stop.set()
        for name in ("reader", "metrics"):
            if name in by_name:
                by_name[name].join(15)
        if self.daemon_summary is not None:
            with self.state.lock:
                self.state.scored = self.daemon_summary.records_in
        if not any(t.is_alive() for t in self.threads):
            # Let go of the daemon's Kafka clients now, while the broker still answers their goodbyes.
            self.daemon = None
            gc.collect()

    def _write_pids(self, broker: EmbeddedBroker) -> None:
        if self.opts.pid_file is not None:
            import os

            self.opts.pid_file.write_text(
                json.dumps({"demo": os.getpid(), "broker": broker.pid, "bootstrap": broker.bootstrap})
            )


def fit_bootstrap(model_dir: Path, fit_steps: int, seed: int) -> dict:
    """The daemon's starting model, fitted on the pump's known modes A and B and saved to `model_dir`."""
    from streammoe.demo.sensors import CHANNELS, training_data
    from streammoe.model.config import ModelConfig
    from streammoe.model.detector import MixtureDetector
    from streammoe.state.persistence import save_detector

    t0 = time.monotonic()
    x = training_data(seed=seed + 1)
    detector = MixtureDetector(len(CHANNELS), ModelConfig(fit_steps=fit_steps, seed=seed), CHANNELS, device="cpu")
    report = detector.fit(x)
    save_detector(detector, model_dir, {"fitted_on": "streammoe.demo.sensors.training_data (modes A, B)"})
    return {
        "rows": report.n_rows,
        "experts": report.k_selected,
        "weights": report.weights,
        "seconds": round(time.monotonic() - t0, 2),
    }


def create_topics(bootstrap: str) -> None:
    """The demo's topics, one partition each (the daemon would auto-create them with the broker's default)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(t, 1, 1) for t in TOPICS.values()], operation_timeout=10)
    for f in futures.values():
        try:
            f.result(10)
        except KafkaException:  # already there, or auto-created meanwhile: either way it exists
            pass


def run_demo(opts: DemoOptions) -> int:
    demo = Demo(opts)
    in_main = threading.current_thread() is threading.main_thread()
    previous: dict[signal.Signals, Any] = {}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if demo.stop_event.is_set():  # a second Ctrl-C: stop waiting (cleanup still runs in `finally`)
            raise KeyboardInterrupt
        demo.stop_event.set()

    if in_main:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        summary = demo.run()
    except BrokerError as e:
        print(f"streammoe demo: error: {e}", file=sys.stderr)
        return 2
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    line = json.dumps(summary, separators=(",", ":"))
    print(line, flush=True)
    if opts.summary_json is not None:
        full = {
            **summary,
            "alert_list": demo.watch.alert_list,
            "event_list": demo.state.events,
            "incident_list": list(demo.state.incidents.values()),
        }
        opts.summary_json.write_text(json.dumps(full, indent=1, default=str))
    return 1 if demo.failed else 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Each DemoOptions field is the option of its name, but `view`: on unless --no-view or not on a terminal."""
    named = {f.name: getattr(args, f.name) for f in fields(DemoOptions) if f.name != "view"}
    return run_demo(DemoOptions(**named, view=not args.no_view and sys.stdout.isatty()))


def add_options(p: argparse.ArgumentParser) -> None:
    """`streammoe demo`'s options (its help line is in cli.EXTRA_COMMANDS)."""
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop after this many seconds (default: when the whole schedule has been scored)",
    )
    p.add_argument("--rate", type=float, default=DEFAULT_RATE, help="records per second (0 = as fast as possible)")
    p.add_argument("--seed", type=int, default=0, help="simulator and model seed")
    p.add_argument("--no-view", action="store_true", help="one line per second instead of the live view")
    p.add_argument(
        "--summary-json",
        type=Path,
        default=None,
        help="write the final summary, every alert with its ground truth, and every event here",
    )
    p.add_argument(
        "--malformed-every",
        type=int,
        default=2000,
        help="send a record missing a channel after every N records (0 = never)",
    )
    p.add_argument("--fit-steps", type=int, default=1000, help="gradient steps for the starting model")
    p.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--scale", type=int, default=1, help="multiply the schedule's phase lengths")
    p.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="daemon log level (logs go to stderr)",
    )
    p.add_argument("--pid-file", type=Path, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_demo)
