"""`streammoe bench`: the quality tracks of docs/evaluation.md with peers side by side, `--speed`, and `--fuzz`."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from benchmarks.t4 import T4A_METHODS, T4B_METHODS, T4B_PAIRS, MultiModeOptions
from benchmarks.tracks import (
    EXTRA_METHODS,
    METHODS,
    T3_METHODS,
    T3_PAIRS,
    BenchOptions,
    FitCache,
    Observer,
    SeriesRun,
    TrackResult,
)
from streammoe.model.config import ModelConfig
from streammoe.model_options import UsageError, incident_settings

TRACKS = ("T1", "T2", "T3", "T4A", "T4B", "SPLICE")
ALL_METHODS = tuple(dict.fromkeys(METHODS + T3_METHODS + T4A_METHODS + T4B_METHODS + EXTRA_METHODS))
SCALAR_TYPES = (int, float)


def default_data_root() -> Path:
    """$STREAMMOE_DATA, else the nearest shared/datasets above the checkout (a git worktree sits one level deeper
    than the main checkout, so a fixed ../shared missed it and SPLICE, T1-T3 found no data)."""
    env = os.environ.get("STREAMMOE_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents[1:]:
        if (parent / "shared" / "datasets").is_dir():
            return parent / "shared" / "datasets"
    return here.parents[2] / "shared" / "datasets"


def _config_fields() -> dict[str, type]:
    return {n: f.annotation for n, f in ModelConfig.model_fields.items() if f.annotation in SCALAR_TYPES}


def _parse_pairs(text: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in text.split(","):
        a, sep, b = item.strip().partition("->")
        if not sep or not a or not b:
            raise argparse.ArgumentTypeError(f"a pair is 'machine-a->machine-b', got {item!r}")
        pairs.append((a.strip(), b.strip()))
    return tuple(pairs)


def _parse_mode_pairs(text: str) -> tuple[tuple[int, int], ...]:
    try:
        return tuple((int(a), int(b)) for a, b in (item.split("->") for item in text.split(",")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"mode pairs are 'a->b,c->d' with mode numbers, got {text!r}") from None


def add_options(p: argparse.ArgumentParser) -> None:
    """`streammoe bench`'s options (its help line is in streammoe/cli.py's EXTRA_COMMANDS)."""
    p.description = __doc__
    p.add_argument(
        "--tracks", default=None, help=f"comma list of {','.join(TRACKS)} (default: all, or none with --speed)"
    )
    p.add_argument(
        "--series", default=None, help="only series whose name contains this (e.g. valve1, machine-1, omi-2)"
    )
    p.add_argument("--max-series", type=int, default=None, help="at most N series per dataset (T3: N pairs)")
    p.add_argument(
        "--methods", default=None, help=f"comma list among {', '.join(ALL_METHODS)} (default: each track's own list)"
    )
    p.add_argument(
        "--pairs",
        type=_parse_pairs,
        default=T3_PAIRS,
        help="T3 pairs 'a->b,c->d' of SMD machines (default: " + ",".join(f"{a}->{b}" for a, b in T3_PAIRS) + ")",
    )
    p.add_argument(
        "--data-root", type=Path, default=None, help="datasets folder (default: $STREAMMOE_DATA or ../shared/datasets)"
    )
    p.add_argument(
        "--t4-data",
        type=Path,
        default=None,
        help="T4A/T4B: a folder of series files with manifest.json (benchmarks/tep_data.py, "
        "streammoe.testing.process_files); default: the process simulator in memory",
    )
    p.add_argument("--t4-seed", type=int, default=0, help="T4A/T4B: the simulator's seed")
    p.add_argument(
        "--t4-pairs",
        type=_parse_mode_pairs,
        default=T4B_PAIRS,
        help="T4B: fitted->unseen mode pairs (default: " + ",".join(f"{a}->{b}" for a, b in T4B_PAIRS) + ")",
    )
    p.add_argument("--t4-records", type=int, default=2400, help="T4B/SPLICE: records on each side of the switch")
    p.add_argument("--out", type=Path, default=None, help="results folder (default: results/<timestamp>)")
    p.add_argument("--batch-size", type=int, default=256, help="streammoe micro-batch, as `score --batch-size`")
    p.add_argument("--no-plots", action="store_true", help="skip the per-series PNG plots")
    p.add_argument("--speed", action="store_true", help="measure score_many throughput (K=8, 38 channels, S=8 and 1)")
    p.add_argument("--speed-repeats", type=int, default=15)
    p.add_argument(
        "--perf",
        action="store_true",
        help="the fast path on an embedded broker: consume, consume+decode, score, learn, end to end per K "
        "and S, river HST; table, JSON and plot (see benchmarks/perf.py)",
    )
    p.add_argument("--perf-k", type=_int_list, default=(1, 4, 8, 16), help="--perf: experts K (default 1,4,8,16)")
    p.add_argument("--perf-s", type=_int_list, default=(1, 8), help="--perf: importance samples S (default 1,8)")
    p.add_argument("--perf-records", type=int, default=60_000, help="--perf: records in the topic")
    p.add_argument("--perf-serial", action="store_true", help="--perf: also run the daemon unpipelined")
    p.add_argument(
        "--perf-no-cascade", action="store_true", help="--perf: skip the cascade column (model/cascade.py, S > 1)"
    )
    p.add_argument(
        "--perf-compile", action="store_true", help="--perf: also time the torch.compile'd E-step (slow to compile)"
    )
    p.add_argument(
        "--perf-latency",
        action="store_true",
        help="--perf: produce -> alert latency at --perf-rate records/s (the default model, K=8, S=8)",
    )
    p.add_argument(
        "--perf-latency-only",
        action="store_true",
        help="--perf: only the produce -> alert latency (no throughput grid)",
    )
    latency_model = p.add_mutually_exclusive_group()  # the latency run's model is the default model without these
    latency_model.add_argument(
        "--perf-latency-full-pass",
        action="store_true",
        help="--perf-latency: the model with the cascade off (every record on the full S-sample pass)",
    )
    latency_model.add_argument(
        "--perf-latency-cascade",
        action="store_true",
        help="--perf-latency: the model with the cascade on (the default)",
    )
    p.add_argument("--perf-threads", type=int, default=1, help="--perf: torch threads (default 1)")
    p.add_argument("--perf-rate", type=int, default=10_000, help="--perf-latency: offered records/s")
    p.add_argument(
        "--perf-latency-s", type=int, default=8, help="--perf-latency: importance samples S of the model (K=8)"
    )
    p.add_argument(
        "--fuzz",
        action="store_true",
        help="hostile and good records through a real broker and `streammoe run`: every offset accounted for",
    )
    p.add_argument("--fuzz-records", type=int, default=10_000)
    p.add_argument("--fuzz-seed", type=int, default=0)
    p.add_argument(
        "--context-window",
        type=int,
        default=None,
        help="the model's time context window (ModelConfig.context.window; 1: none); streammoe-W1 and "
        "streammoe-ctx run window 1 and the default context beside it",
    )
    p.add_argument(
        "--context-decoder",
        choices=("full", "linear"),
        default=None,
        help="how the experts reconstruct the context's features (ModelConfig.context.decoder), for "
        "streammoe-ctx and --context-window",
    )
    group = p.add_argument_group("model overrides (ModelConfig fields; defaults from ModelConfig)")
    group.add_argument(
        "--cascade",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ModelConfig.cascade.enabled: streammoe scores with the cascade, as the daemon does (model/cascade.py)",
    )
    for name, typ in _config_fields().items():
        group.add_argument(f"--{name.replace('_', '-')}", dest=f"cfg_{name}", type=typ, default=None)
    p.set_defaults(func=cmd_bench)


def _git_commit() -> str:
    """HEAD, and how many tracked files differ from it: the figures belong to the tree that made them."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, cwd=here, check=False
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=here,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    changed = [line[3:] for line in dirty.stdout.splitlines() if line.strip()]
    suffix = f" + uncommitted changes in {', '.join(changed)}" if changed else ""
    return (head.stdout.strip() or "unknown") + suffix


def _log_run(track: str, run: SeriesRun) -> None:
    m = run.metrics
    parts = [
        f"{k} {m[k]:.3f}"
        for k in (
            "auc_pr",
            "f1",
            "far",
            "far_b_train_2nd_half",
            "flag_rate",
            "far_old",
            "far_new_2nd_half",
            "records_to_mode_added",
        )
        if m.get(k) is not None
    ]
    print(
        f"  {track} {run.series:28s} {run.method:16s} {'  '.join(parts)}  (fit {run.fit_s:.0f}s, score {run.score_s:.0f}s)",
        file=sys.stderr,
        flush=True,
    )


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a comma list of integers, got {text!r}") from None


def _perf(args: argparse.Namespace) -> int:
    from benchmarks import perf, perf_latency, perf_options, perf_report

    opts = perf_options.from_args(args)
    out = args.out or Path("results") / datetime.now().strftime("perf-%Y%m%d-%H%M%S")
    if args.perf_latency_only:
        result = perf_latency.latency_only(opts, progress=lambda line: print(line, file=sys.stderr, flush=True))
        result["setup"].update(command=" ".join(["streammoe"] + sys.argv[1:]), git=_git_commit())
        out.mkdir(parents=True, exist_ok=True)
        (out / "latency.json").write_text(json.dumps(result, indent=1))
        print("\n".join(perf_report.latency_markdown(result["latency"])))
        print(f"bench: perf latency -> {out / 'latency.json'}")
        return 0
    result = perf.measure(opts, progress=lambda line: print(line, file=sys.stderr, flush=True))
    result["setup"]["command"] = " ".join(["streammoe"] + sys.argv[1:])
    result["setup"]["git"] = _git_commit()
    js, _, png = perf_report.write(result, out)
    print(perf_report.markdown(result))
    print(f"bench: perf -> {js}" + (f", {png}" if png else ""))
    return 0


def _model_config(overrides: dict[str, Any]) -> ModelConfig:
    """ModelConfig with the bench's overrides; UsageError naming the option when one is invalid."""
    try:
        return ModelConfig(**overrides)
    except ValidationError as e:
        err = e.errors()[0]
        flag = "--" + "-".join(str(p) for p in err["loc"]).replace("_", "-")
        raise UsageError(f"{flag}: {err['msg'].removeprefix('Value error, ')}") from None


def cmd_bench(args: argparse.Namespace) -> int:
    if args.perf:
        return _perf(args)
    from benchmarks import report, speed, tracks

    overrides = {n: getattr(args, f"cfg_{n}") for n in _config_fields() if getattr(args, f"cfg_{n}") is not None}
    if args.context_window is not None:
        overrides["context"] = {"window": args.context_window}
    if args.context_decoder is not None:
        overrides["context"] = {**overrides.get("context", {}), "decoder": args.context_decoder}
    if args.cascade is not None:
        overrides["cascade"] = {"enabled": args.cascade}
    config = _model_config(overrides)
    only_other = args.speed or args.fuzz
    wanted = (
        [t.strip().upper() for t in args.tracks.split(",")] if args.tracks else ([] if only_other else list(TRACKS))
    )
    unknown_methods = sorted({m.strip() for m in args.methods.split(",")} - set(ALL_METHODS)) if args.methods else []
    if unknown_methods:
        raise UsageError(f"unknown method(s) {unknown_methods}; known: {list(ALL_METHODS)}")
    unknown = sorted(set(wanted) - set(TRACKS))
    if unknown:
        raise UsageError(f"unknown track(s) {unknown}; known: {list(TRACKS)}")
    methods = tuple(m.strip() for m in args.methods.split(",")) if args.methods else None
    data_root = args.data_root or default_data_root()
    if set(wanted) - {"T4A", "T4B"} and not data_root.is_dir():
        raise UsageError(f"no datasets folder at {data_root}; give --data-root or set STREAMMOE_DATA")
    out = args.out or Path("results") / datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    incidents = incident_settings()  # as `score`'s incident column: the daemon's STREAMMOE_INCIDENTS__*
    opts = tracks.BenchOptions(
        data_root, config, args.series, args.max_series, methods, args.pairs, args.batch_size, incidents
    )

    def observe(track: str, run: SeriesRun, *plot: Any) -> None:
        """An Observer: log the run; `plot` (labels, scores, flagged, extras, offset, marks) goes on to plot_series."""
        _log_run(track, run)
        if not args.no_plots:
            report.plot_series(out, track, run.series, run.method, *plot)

    header = {
        "command": "streammoe " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("streammoe") else " ".join(sys.argv),
        "started": datetime.now().isoformat(timespec="seconds"),
        "git": _git_commit(),
        "data_root": str(data_root),
        "model overrides": overrides or "none",
        "incident settings": incidents.model_dump(exclude_defaults=True) or "defaults",
        "torch threads": _torch_threads(),
    }
    started = time.perf_counter()
    results = []
    cache = tracks.FitCache()
    mm = None
    try:
        for t in wanted:
            print(f"{t} ...", file=sys.stderr, flush=True)
            if t == "T1":
                results.append(tracks.run_t1(opts, observe))
            elif t == "T2":
                results.append(tracks.run_t2(opts, cache, observe))
            elif t in ("T4A", "T4B"):
                from benchmarks import t4

                mm = mm or _multimode(args)
                results.append((t4.run_t4a if t == "T4A" else t4.run_t4b)(opts, mm, cache, observe))
            elif t == "SPLICE":
                spliced = _splice(args, opts, cache, observe)
                if spliced is not None:
                    results.append(spliced)
            else:
                t2 = next((r for r in results if r.track == "T2"), None)
                results.append(tracks.run_t3(opts, cache, t2, observe))
            report.write_report(out, results, header)
    finally:
        cache.close()
    speed_result = None
    if args.speed:
        print("speed ...", file=sys.stderr, flush=True)
        speed_result = speed.measure(repeats=args.speed_repeats)
    header["wall_s"] = round(time.perf_counter() - started, 1)
    path = report.write_report(out, results, header, speed_result)
    for r in results:
        print(report.track_markdown(r))
    if speed_result is not None:
        print(report.speed_markdown(speed_result))
    print(f"bench: report -> {path}")
    if args.fuzz:
        return _fuzz(args, out, header)
    return 0


def _multimode(args: argparse.Namespace) -> MultiModeOptions:
    """T4's data: a folder of series files when --t4-data names one, else the process simulator."""
    from benchmarks import multimode

    data = multimode.folder_set(args.t4_data) if args.t4_data else multimode.simulator_set(args.t4_seed)
    return MultiModeOptions(data, args.t4_pairs, args.t4_records, args.t4_seed)


def _splice(args: argparse.Namespace, opts: BenchOptions, cache: FitCache, observe: Observer) -> TrackResult | None:
    """SPLICE, or None (with a line saying why) when the SMD files are not there."""
    from benchmarks import splice

    smd = opts.data_root / "smd"
    if not smd.is_dir():
        print(f"SPLICE: skipped, no SMD folder at {smd}", file=sys.stderr, flush=True)
        return None
    result = splice.run_splice(opts, cache, args.t4_records, observe)
    if result is None:
        print("SPLICE: skipped, none of the SMD pairs is there", file=sys.stderr, flush=True)
    return result


def _fuzz(args: argparse.Namespace, out: Path, header: dict) -> int:
    """Run the fuzz benchmark, print its table, write fuzz.json; exit 1 if any record was not as expected."""
    import dataclasses
    import json

    from benchmarks import fuzz

    print(f"fuzz: {args.fuzz_records} records (seed {args.fuzz_seed}) ...", file=sys.stderr, flush=True)
    result = fuzz.run_fuzz(args.fuzz_records, args.fuzz_seed)
    (out / "fuzz.json").write_text(json.dumps({**header, **dataclasses.asdict(result), "ok": result.ok}, indent=2))
    print(fuzz.markdown(result))
    print(f"bench: fuzz -> {out / 'fuzz.json'} ({'ok' if result.ok else 'FAILED'})")
    return 0 if result.ok else 1


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()
