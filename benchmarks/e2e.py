"""End-to-end throughput: records/s through a real broker and the daemon, against raw consume+decode.

    python -m benchmarks.e2e --records 60000 --k 8 --channels 38

Starts a Tansu broker (memory storage) on a free loopback port, produces synthetic records from K operating
modes, fits a K-expert model briefly (quality is not the point here), then reads the same topic twice with
fresh consumer groups: once consuming and decoding only, once through the whole daemon (score, learn,
publish alerts and scores, commit). Both rates are timed from the first batch to the last, so group joins
do not count. The ratio e2e/raw says how much of the transport's speed the model leaves.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.perf_rates import consume_rate
from benchmarks.workload import fitted_on_k_modes, produce, synthetic
from streammoe.testing.broker import EmbeddedBroker
from streammoe.testing.settings import daemon_settings, topics_for

if TYPE_CHECKING:
    from streammoe.config import Settings


def raw_rate(settings: Settings, n: int) -> float:
    """Consume and decode `n` records with the daemon's own consumer settings and decoder; records/s."""
    return consume_rate(settings, n, decode=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=60_000)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--channels", type=int, default=38)
    ap.add_argument("--n-samples", type=int, default=8, help="importance samples per record (ModelConfig.n_samples)")
    ap.add_argument("--max-batch", type=int, default=1024)
    ap.add_argument("--fit-steps", type=int, default=300)
    ap.add_argument("--torch-threads", type=int, default=1, help="0 = torch's default")
    ap.add_argument("--scores-topic", action="store_true", help="also publish a score per record (off by default)")
    args = ap.parse_args(argv)

    from streammoe.daemon import Daemon, tune_allocator
    from streammoe.logs import configure_logging
    from streammoe.state.persistence import save_detector

    configure_logging("WARNING", "console")
    tune_allocator()
    channels = [f"ch{i:02d}" for i in range(args.channels)]
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        bootstrap = broker.bootstrap
        topic = f"bench-{uuid.uuid4().hex[:6]}"
        rows = synthetic(args.records, args.k, args.channels, seed=2)
        t0 = time.monotonic()
        produce(bootstrap, topic, rows, channels)
        produce_s = time.monotonic() - t0
        save_detector(fitted_on_k_modes(args.k, args.n_samples, channels, args.fit_steps), Path(tmp) / "model")

        def settings(group: str) -> Settings:
            roles = ("alerts", "dead", "events", "control", *(("scores",) if args.scores_topic else ()))
            return daemon_settings(
                bootstrap,
                topics_for(topic, roles),
                channels,
                group=group,
                checkpoint_dir=Path(tmp) / "ckpt",
                model_dir=Path(tmp) / "model",
                kafka__commit_interval_s=1.0,
                kafka__extra={"heartbeat.interval.ms": "2000"},
                batching__max_batch=args.max_batch,
                torch_threads=args.torch_threads,
            )

        raw = raw_rate(settings("bench-raw"), args.records)
        daemon = Daemon(settings("bench-e2e"))
        summary = daemon.run(max_records=args.records, timeout_s=600)
        e2e = summary.records_in / summary.busy_seconds
    result = {
        "records": args.records,
        "k": args.k,
        "channels": args.channels,
        "n_samples": args.n_samples,
        "max_batch": args.max_batch,
        "scores_topic": args.scores_topic,
        "produce_rec_s": round(args.records / produce_s),
        "raw_consume_decode_rec_s": round(raw),
        "e2e_rec_s": round(e2e),
        "ratio": round(e2e / raw, 3),
        "alerts": summary.alerts,
        "e2e_stage_seconds": daemon.metrics.stage_totals(),
        "torch_threads": __import__("torch").get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
