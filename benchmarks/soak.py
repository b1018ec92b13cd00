"""Soak: millions of records through a real broker and `streammoe run`, with the daemon's memory over time.

    python -m benchmarks.soak --records 5000000

Starts Tansu (memory storage), fits a small bootstrap model, runs the daemon as its own process (so its RSS is
its own) and keeps the input topic a few hundred thousand records ahead of it. Every couple of seconds it
samples the daemon's RSS (/proc) and its progress (/metrics). The verdict: after the warm-up share of the run,
RSS stays within ±10 % of its median, and nothing was lost (records in = records produced).

Records cycle through a pool of pre-encoded payloads (steady modes plus 0.5 % spikes) so the producer costs
little CPU beside the daemon; repeated timestamps are valid input.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from benchmarks.probe import rss_mb, samples, start_daemon
from benchmarks.workload import fitted_on_k_modes, synthetic
from streammoe.kafka.sink import produce as produce_message
from streammoe.testing.broker import EmbeddedBroker
from streammoe.testing.records import keyed_records
from streammoe.testing.settings import topics_for

POOL = 100_000
AHEAD = 300_000  # the producer stays at most this many records ahead of the daemon
FLAT_BAND = 0.10  # after the warm-up, RSS within ±10 % of its median is flat


@dataclass
class Sample:
    t_s: float
    records: int
    rss_mb: float


@dataclass
class SoakResult:
    """What a soak measured. The rate and the RSS verdict are derived from the samples (properties), so a
    report can never disagree with the samples it carries."""

    records: int
    channels: int
    k: int
    n_samples: int
    seconds: float = 0.0
    alerts: int = 0
    warmup_share: float = 0.1
    lost: int = 0
    exit_code: int | None = None
    samples: list[Sample] = field(default_factory=list)

    @property
    def rec_s(self) -> float:
        """Records per second between the first and the last sample that saw records (0.0 with fewer than two)."""
        busy = [s for s in self.samples if s.records > 0]
        if len(busy) < 2:
            return 0.0
        return round((busy[-1].records - busy[0].records) / (busy[-1].t_s - busy[0].t_s))

    @property
    def rss_after_warmup(self) -> list[float]:
        return [s.rss_mb for s in self.samples if s.records >= self.warmup_share * self.records]

    @property
    def rss_median_mb(self) -> float:
        after = self.rss_after_warmup
        return round(float(np.median(after)), 1) if after else 0.0

    @property
    def max_deviation(self) -> float:
        """The largest |RSS - median| / median after the warm-up."""
        after = self.rss_after_warmup
        if not after:
            return 0.0
        med = float(np.median(after))
        return round(max(abs(v - med) for v in after) / med, 4)

    @property
    def flat(self) -> bool:
        return bool(self.rss_after_warmup) and self.max_deviation <= FLAT_BAND

    def as_dict(self, samples: bool = True) -> dict:
        """soak.json's fields (the summary line's without `samples`), the derived ones among the stored."""
        after = self.rss_after_warmup
        out = {
            "records": self.records,
            "channels": self.channels,
            "k": self.k,
            "n_samples": self.n_samples,
            "seconds": self.seconds,
            "rec_s": self.rec_s,
            "alerts": self.alerts,
            "rss_median_mb": self.rss_median_mb,
            "rss_min_mb": min(after, default=0.0),
            "rss_max_mb": max(after, default=0.0),
            "max_deviation": self.max_deviation,
            "warmup_share": self.warmup_share,
            "flat": self.flat,
            "lost": self.lost,
            "exit_code": self.exit_code,
        }
        if samples:
            out["samples"] = [asdict(s) for s in self.samples]
        return out


def payloads(channels: list[str], k: int, seed: int = 1) -> list[tuple[bytes, bytes]]:
    rows = synthetic(POOL, k, len(channels), seed=seed)
    rng = np.random.default_rng(seed)
    spikes = rng.random(POOL) < 0.005
    rows[spikes, rng.integers(0, len(channels), int(spikes.sum()))] += 25.0
    return keyed_records(rows, None)


def run(args: argparse.Namespace) -> SoakResult:
    from confluent_kafka import Producer

    from streammoe.state.persistence import save_detector

    channels = [f"ch{i:02d}" for i in range(args.channels)]
    result = SoakResult(args.records, args.channels, args.k, args.n_samples, warmup_share=args.warmup_share)
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        topic = f"soak-{uuid.uuid4().hex[:6]}"
        save_detector(fitted_on_k_modes(args.k, args.n_samples, channels), Path(tmp) / "model")
        pool = payloads(channels, args.k)
        produced = [0]
        processed = [0.0]
        stop = threading.Event()

        def keep_ahead() -> None:
            p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 20, "acks": "all"})
            while produced[0] < args.records and not stop.is_set():
                if produced[0] - processed[0] > AHEAD:
                    p.poll(0.1)
                    continue
                for _ in range(min(20_000, args.records - produced[0])):
                    key, value = pool[produced[0] % POOL]
                    produce_message(p, topic, value, key)
                    produced[0] += 1
            p.flush(60)

        log = open(Path(tmp) / "daemon.log", "wb")  # noqa: SIM115
        # The daemon's own defaults for fetch wait, batching wait and commit interval: the soak runs it as deployed.
        daemon, port = start_daemon(
            broker.bootstrap,
            topics_for(topic),
            channels,
            Path(tmp),
            log,
            kafka__fetch_wait_max_ms=None,
            kafka__commit_interval_s=None,
            batching__max_batch=args.max_batch,
            batching__max_wait_ms=None,
            checkpoint__interval_s=30,
        )
        producer = threading.Thread(target=keep_ahead, daemon=True)
        producer.start()
        started = time.monotonic()
        try:
            while daemon.poll() is None and processed[0] < args.records:
                time.sleep(args.sample_s)
                processed[0] = sum(samples(port, "streammoe_records_in_total").values())
                sample = Sample(round(time.monotonic() - started, 1), int(processed[0]), round(rss_mb(daemon.pid), 1))
                result.samples.append(sample)
                if args.verbose:
                    print(
                        f"  {sample.t_s:7.1f}s {sample.records:>9d} records  RSS {sample.rss_mb:7.1f} MB",
                        file=sys.stderr,
                        flush=True,
                    )
            result.seconds = time.monotonic() - started
            result.alerts = int(sum(samples(port, "streammoe_alerts_total").values()))
        finally:
            stop.set()
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                try:
                    daemon.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    daemon.kill()
            result.exit_code = daemon.returncode
            producer.join(timeout=60)
            log.close()
            if daemon.returncode != 0:
                print((Path(tmp) / "daemon.log").read_text()[-3000:], file=sys.stderr)
    result.lost = max(0, args.records - int(processed[0]))
    return result


def plot(result: SoakResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot([s.records / 1e6 for s in result.samples], [s.rss_mb for s in result.samples])
    ax.axvline(result.warmup_share * result.records / 1e6, ls=":", c="grey")
    for bound in (0.9, 1.1):
        ax.axhline(result.rss_median_mb * bound, ls="--", c="grey", lw=0.8)
    ax.set_xlabel("records processed (millions)")
    ax.set_ylabel("daemon RSS (MB)")
    ax.set_title(f"soak: {result.records:,} records, {result.rec_s:,.0f} rec/s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=5_000_000)
    ap.add_argument("--channels", type=int, default=38)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--n-samples", type=int, default=8)
    ap.add_argument("--max-batch", type=int, default=1024)
    ap.add_argument("--warmup-share", type=float, default=0.1, help="share of the run before RSS must be flat")
    ap.add_argument("--sample-s", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=None, help="results folder (default: results/soak-<timestamp>)")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    result = run(args)
    out = args.out or Path("results") / f"soak-{datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(result.as_dict(), indent=1))
    try:
        plot(result, out / "soak-rss.png")
    except ImportError:
        pass
    print(json.dumps(result.as_dict(samples=False)))
    print(f"soak: report -> {out}")
    return 0 if result.flat and not result.lost and result.exit_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
