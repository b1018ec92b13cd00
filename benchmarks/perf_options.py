"""What a `streammoe bench --perf` run is asked for (PerfOptions), the daemon settings its runs use, and the process
set up as the daemon sets it up."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from streammoe.config import Settings
from streammoe.testing.settings import daemon_settings as kit_settings
from streammoe.testing.settings import topics_for


@dataclass
class PerfOptions:
    ks: tuple[int, ...] = (1, 4, 8, 16)
    samples: tuple[int, ...] = (1, 8)
    channels: int = 38
    records: int = 60_000
    max_batch: int = 1024
    fit_steps: int = 200
    repeats: int = 3
    torch_threads: int = 1
    hst_records: int = 3000
    latency: bool = False
    latency_rate: int = 10_000
    latency_seconds: float = 20.0
    latency_k: int = 8
    latency_s: int = 8
    latency_max_wait_ms: int = 20
    latency_pipeline: bool = True
    latency_reader_wait_s: float = 0.005
    # The latency run's model: None as the default model is (ModelConfig's cascade), False every record on the full
    # pass (--perf-latency-full-pass), True the cascade on (--perf-latency-cascade) whatever the default.
    latency_cascade: bool | None = None
    pipeline: tuple[bool, ...] = (True,)
    variants_k: int = 8
    variants_s: int = 8
    compile: bool = False
    cascade: bool = True  # also every S > 1 point with the cascade on (scoring, learning, end to end)

    def latency_model_cascade(self) -> bool:
        """Whether the latency run's model screens records with the cascade: as the default model does, unless the
        run asks otherwise, so the figure is the latency of the model operators run."""
        from streammoe.model.config import ModelConfig

        return ModelConfig().cascade.enabled if self.latency_cascade is None else self.latency_cascade


def from_args(args: argparse.Namespace) -> PerfOptions:
    """The options of `streammoe bench --perf ...` (benchmarks/cli.py defines the flags)."""
    return PerfOptions(
        ks=args.perf_k,
        samples=args.perf_s,
        records=args.perf_records,
        latency=args.perf_latency or args.perf_latency_only,
        latency_rate=args.perf_rate,
        latency_s=args.perf_latency_s,
        latency_cascade=False if args.perf_latency_full_pass else True if args.perf_latency_cascade else None,
        torch_threads=args.perf_threads,
        pipeline=(True, False) if args.perf_serial else (True,),
        compile=args.perf_compile,
        cascade=not args.perf_no_cascade,
    )


def daemon_settings(
    bootstrap: str,
    topic: str,
    channels: list[str],
    tmp: Path,
    group: str,
    max_batch: int,
    max_wait_ms: int,
    threads: int,
    pipeline: bool = True,
    model: str = "model",
) -> Settings:
    return kit_settings(
        bootstrap,
        topics_for(topic),
        channels,
        group=group,
        checkpoint_dir=tmp / f"ckpt-{group}",
        model_dir=tmp / model,
        kafka__commit_interval_s=1.0,
        kafka__extra={"heartbeat.interval.ms": "2000"},
        batching__max_batch=max_batch,
        batching__max_wait_ms=max_wait_ms,
        batching__pipeline=pipeline,
        torch_threads=threads,
    )


def prepare(opts: PerfOptions) -> tuple[list[str], float]:
    """The process as the daemon sets it up (quiet logs, its allocator, its torch threads): the channels, and the
    clock's start."""
    import torch

    from streammoe.daemon import tune_allocator
    from streammoe.logs import configure_logging

    configure_logging("WARNING", "console")
    tune_allocator()
    if opts.torch_threads:
        torch.set_num_threads(opts.torch_threads)
    return [f"ch{i:02d}" for i in range(opts.channels)], time.monotonic()
