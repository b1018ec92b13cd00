"""`streammoe bench --perf`: where the time goes, from the broker to the alert, measured in one run.

On one embedded Tansu broker (memory storage) and one topic of synthetic 38-channel records from 16 operating
modes, for every K (experts) and S (importance samples) asked for:

- raw consume: the daemon's consumer settings, `consume()` only;
- consume + decode: the same plus `RecordDecoder.decode` (the ceiling for the daemon);
- score: `MixtureDetector.score_many` alone on decoded batches (median of repeats);
- learn: `learn_many` alone on those scored batches;
- end to end: the whole daemon (`Daemon.run`: consume, decode, score, learn, publish alerts, acknowledge,
  commit) from a fresh consumer group, timed from its first batch to its last acknowledgement;
- cascade (S > 1): score, learn and end to end again with `ModelConfig.cascade` on (model/cascade.py), the
  end-to-end run right after the plain one, and the share of records it gave the full pass;
- river HalfSpaceTrees (the quality bench's peer, score then learn each row) on the same records.

Consume and consume + decode run before and after the grid; the table shows the median of those runs so
every ratio divides rates measured in the same run. `--latency` adds produce -> alert latency: records are
produced at a fixed rate (default 10k/s) with the send time as `ts`, 1 % of them far off every mode, and a
reader on the alerts topic takes receive time - `ts` for every alert; then the same paced stream goes through
a relay that does no work (the daemon's consumer and producer settings, every 100th record forwarded): the
floor that the broker and the clients set on this machine, in the same run.

This module runs the grid (`measure`); the options are in perf_options.py, the rates without the daemon in
perf_rates.py, the latency run in perf_latency.py, the report in perf_report.py, the machine in workload.py.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from benchmarks.perf_latency import latency
from benchmarks.perf_options import PerfOptions, daemon_settings, prepare
from benchmarks.perf_rates import cascade_rates, consume_rate, hst_rate, model_rates, variants
from benchmarks.workload import N_MODES, fitted, produce, synthetic
from streammoe.testing.broker import EmbeddedBroker
from streammoe.testing.records import keyed_records


def measure(opts: PerfOptions, progress: Callable[[str], object] = print) -> dict:
    import torch

    from streammoe.daemon import Daemon
    from streammoe.state.persistence import save_detector
    from streammoe.wire.records import RecordDecoder

    channels, started = prepare(opts)
    result: dict = {"setup": {}, "transport": {}, "grid": [], "latency": None}
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        topic = f"perf-{uuid.uuid4().hex[:6]}"
        rows = synthetic(opts.records, N_MODES, opts.channels)
        t0 = time.monotonic()
        produce(broker.bootstrap, topic, rows, channels)
        produce_rate = opts.records / (time.monotonic() - t0)
        base = daemon_settings(broker.bootstrap, topic, channels, tmp, "perf", opts.max_batch, 50, opts.torch_threads)
        raw, dec = [], []

        def transport() -> None:
            raw.append(consume_rate(base, opts.records, decode=False))
            dec.append(consume_rate(base, opts.records, decode=True))
            progress(f"perf: consume {raw[-1]:.0f} rec/s, consume+decode {dec[-1]:.0f} rec/s")

        transport()
        decoder = RecordDecoder(base.records)
        raws = [value for _, value in keyed_records(rows[: 8 * opts.max_batch], channels)]
        batches = [decoder.decode(raws[i : i + opts.max_batch]).values for i in range(0, len(raws), opts.max_batch)]
        hst, hst_desc = hst_rate(rows, opts.hst_records)
        hst15, hst15_desc = hst_rate(rows, opts.hst_records // 4, height=15)
        progress(f"perf: river HST {hst:.0f} rec/s (height 8), {hst15:.0f} rec/s (height 15)")
        for k in opts.ks:
            for s in opts.samples:
                detector = fitted(k, s, channels, opts.fit_steps)
                save_detector(detector, tmp / "model")
                if opts.cascade and s > 1:  # the same model with the cascade on, for the daemon
                    detector.config.cascade.enabled = True
                    save_detector(detector, tmp / "model-cascade")
                    detector.config.cascade.enabled = False
                score, learn = model_rates(detector, batches, opts.repeats)
                row = {"k": k, "k_active": detector.model.n_active, "s": s, "score_rec_s": score, "learn_rec_s": learn}
                if opts.cascade and s > 1:
                    row.update(cascade_rates(detector, batches, opts.repeats))
                for pipeline in opts.pipeline:
                    group = f"e2e-{k}-{s}-{int(pipeline)}-{uuid.uuid4().hex[:4]}"
                    daemon = Daemon(
                        daemon_settings(
                            broker.bootstrap,
                            topic,
                            channels,
                            tmp,
                            group,
                            opts.max_batch,
                            50,
                            opts.torch_threads,
                            pipeline,
                        )
                    )
                    summary = daemon.run(max_records=opts.records, timeout_s=600)
                    e2e = summary.records_in / summary.busy_seconds if summary.busy_seconds else 0.0
                    key = "e2e_rec_s" if pipeline else "e2e_serial_rec_s"
                    row[key] = e2e
                    row["stage_seconds" if pipeline else "stage_seconds_serial"] = daemon.metrics.stage_totals()
                    if pipeline and "score_cascade_rec_s" in row:  # the same daemon on the cascade's model, next
                        settings = daemon_settings(
                            broker.bootstrap,
                            topic,
                            channels,
                            tmp,
                            group + "-c",
                            opts.max_batch,
                            50,
                            opts.torch_threads,
                            pipeline,
                            "model-cascade",
                        )
                        summary = Daemon(settings).run(max_records=opts.records, timeout_s=600)
                        row["e2e_cascade_rec_s"] = (
                            summary.records_in / summary.busy_seconds if summary.busy_seconds else 0.0
                        )
                progress(
                    f"perf: K={k} S={s} score {score:.0f} learn {learn:.0f} e2e "
                    + ", ".join(
                        f"{key} {row[key]:.0f}"
                        for key in ("e2e_rec_s", "e2e_serial_rec_s", "score_cascade_rec_s", "e2e_cascade_rec_s")
                        if key in row
                    )
                )
                result["grid"].append(row)
        if opts.variants_k:
            detector = fitted(opts.variants_k, opts.variants_s, channels, opts.fit_steps)
            result["variants"] = {
                "k": opts.variants_k,
                "s": opts.variants_s,
                "runs": variants(detector, batches, opts.repeats, opts.compile),
            }
            progress(f"perf: variants {json.dumps(result['variants'])}")
        transport()
        consume = statistics.median(raw)
        consume_decode = statistics.median(dec)
        for row in result["grid"]:
            for key in ("e2e_rec_s", "e2e_serial_rec_s", "e2e_cascade_rec_s"):
                if key in row:
                    row[key.replace("rec_s", "vs_consume_decode")] = row[key] / consume_decode
                    row[key.replace("rec_s", "vs_hst")] = row[key] / hst
                    row[key.replace("rec_s", "vs_hst15")] = row[key] / hst15
        result["transport"] = {
            "produce_rec_s": produce_rate,
            "consume_rec_s": raw,
            "consume_decode_rec_s": dec,
            "consume_median": consume,
            "consume_decode_median": consume_decode,
            "hst_rec_s": hst,
            "hst": hst_desc,
            "hst15_rec_s": hst15,
            "hst15": hst15_desc,
        }
        if opts.latency:
            result["latency"] = latency(broker.bootstrap, channels, tmp, opts, progress)
    result["setup"] = {
        "records": opts.records,
        "channels": opts.channels,
        "modes_in_data": N_MODES,
        "max_batch": opts.max_batch,
        "fit_steps": opts.fit_steps,
        "repeats": opts.repeats,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "device": "cpu",
        "load_average": os.getloadavg(),
        "wall_s": round(time.monotonic() - started, 1),
    }
    return result
