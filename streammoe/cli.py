"""The `streammoe` command line: fit and score series files, benchmark, and run the daemon."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from streammoe.model_options import UsageError, add_model_options, check_saved_model, incident_settings, model_config

if TYPE_CHECKING:
    from tqdm import tqdm

    from streammoe.files.offline import StreamResult
    from streammoe.files.series import Series
    from streammoe.incidents.settings import IncidentSettings


def _progress_bar(total: int, desc: str) -> tqdm:
    """A tqdm bar on stderr that only draws on a terminal (quiet in CI and pipes)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="rec", disable=None, file=sys.stderr, leave=False)


def cmd_fit(args: argparse.Namespace) -> int:
    from streammoe.files.series import read_series

    config = model_config(args)
    series = [read_series(p) for p in args.data]
    channels = series[0].channels
    for s in series[1:]:
        if s.channels != channels:
            raise UsageError(f"{s.path} has channels {s.channels}, {series[0].path} has {channels}")
    values = np.concatenate([s.values for s in series])
    assets = np.concatenate([np.full(len(s.values), s.path.name) for s in series])  # one file, one asset
    times = np.concatenate([_time_axis(s) for s in series])
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        print(f"fit: dropping {int((~finite).sum())} rows with missing or non-finite values", file=sys.stderr)
        values, assets, times = values[finite], assets[finite], times[finite]
    # torch only now: a bad option or file is reported without waiting for it (seconds on a loaded box).
    from streammoe.model.detector import MixtureDetector
    from streammoe.state.persistence import save_detector

    detector = MixtureDetector(len(channels), config, channels)
    with _progress_bar(config.fit_steps, "fit") as bar:
        report = detector.fit(
            values, k=args.k, progress=bar.update, assets=assets, times=times, max_gap=config.context.gap_steps
        )
    save_detector(detector, args.out, {"fitted_on": [str(s.path) for s in series], "fit_report": report.__dict__})
    print(f"fit: {report.n_rows} rows, {report.k_selected} experts, weights {report.weights} -> {args.out}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from streammoe.files.series import read_series, write_scores

    if args.model is None and args.warmup is None:
        raise UsageError("without --model, give --warmup N (rows to learn from before scoring)")
    config = model_config(args)
    incidents = incident_settings()
    series = read_series(args.data)
    # torch only now: a bad option, setting or file is reported without waiting for it (seconds on a loaded box).
    from streammoe.files.offline import score_stream
    from streammoe.state.persistence import load_detector, save_detector

    detector = load_detector(args.model, channels=series.channels) if args.model else None
    if detector is not None:
        check_saved_model(detector.config, config, args)
    with _progress_bar(len(series.values), "score") as bar:
        result, detector = score_stream(
            series.values,
            detector,
            series.channels,
            config if detector is None else None,
            warmup=args.warmup or 0,
            learn=not args.no_learn,
            batch_size=args.batch_size,
            progress=bar.update,
            times=_time_axis(series),
            asset=series.path.name,
            spike_deviation=incidents.spike_deviation,
        )
    write_scores(
        args.out,
        {
            "timestamp": series.timestamps,
            "score": np.round(result.score, 6),
            "is_anomaly": result.is_anomaly,
            "mode": result.mode,
            "mode_entropy": np.round(result.mode_entropy, 6),
            "calibrated_score": np.round(result.calibrated_score, 6),
            "p_value": result.p_value,
            "epistemic": np.round(result.epistemic, 6),
            "aleatoric": np.round(result.aleatoric, 6),
            "n_experts": result.n_experts,
            "top_channels": result.top_channels,
            "incident": _incident_column(result, series, incidents),
            "missing_channels": result.missing_channels,
        },
    )
    if args.save_model:
        save_detector(detector, args.save_model)
    n_alarm = int(result.is_anomaly.sum())
    print(f"score: {len(series.values)} rows, {n_alarm} flagged, {detector.model.n_active} experts -> {args.out}")
    return 0


def _time_axis(series: Series) -> np.ndarray:
    """The file's timestamps in its own median steps, for the context's gaps (one step per row if unparseable)."""
    from streammoe.context.timeline import series_axis

    axis = series_axis(series.timestamps, str(series.path))
    return np.arange(len(series.values), dtype=np.float64) if axis is None else axis


def _incident_column(result: StreamResult, series: Series, settings: IncidentSettings) -> list[str]:
    """Each row's incident id (empty when none), by the daemon's incident tracker with the row as offset, under
    the daemon's `STREAMMOE_INCIDENTS__*` settings (`enabled` false: no incidents, every cell empty).

    The id depends on the rows only, not on the file's name: the same data scores the same."""
    from streammoe.incidents.series import track_series

    if not settings.enabled:
        return [""] * len(result.is_anomaly)
    return track_series(
        result.is_anomaly,
        result.critical,
        result.calibrated_score,
        result.p_value,
        result.mode,
        result.channel_share,
        series.channels,
        settings=settings,
        mode_added=result.mode_added,
        at_once=result.at_once,
    ).column


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line. With `command`, the options of the other subcommands in EXTRA_COMMANDS are left out
    (their line in `--help` stays), so that only the modules that command needs are imported."""
    parser = argparse.ArgumentParser(prog="streammoe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="learn a mixture from normal series files")
    p.add_argument("--data", nargs="+", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="model directory to write")
    p.add_argument("--k", type=int, default=None, help="number of experts (default: chosen by BIC up to --k-max)")
    add_model_options(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("score", help="score a series file prequentially (score first, then learn)")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="scores CSV to write")
    p.add_argument("--model", type=Path, default=None, help="model directory from `streammoe fit`")
    p.add_argument("--warmup", type=int, default=None, help="without --model: rows to learn from first")
    p.add_argument("--no-learn", action="store_true", help="score only; never update the model")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--save-model", type=Path, default=None, help="write the adapted model here afterwards")
    add_model_options(p)
    p.set_defaults(func=cmd_score)

    for name, (help_line, add_options) in EXTRA_COMMANDS.items():
        p = sub.add_parser(name, help=help_line)
        if command is None or name == command:
            add_options(p)
    return parser


def _run_options(p: argparse.ArgumentParser) -> None:
    """`streammoe run`'s one option lives here, so `run --help` answers without importing the daemon (13 s on a
    loaded box: torch, the Kafka client); the daemon is imported when it runs."""
    p.add_argument("--env-file", default=None, help="an env file of STREAMMOE_* settings (see configs/)")
    p.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    from streammoe.daemon.service import cmd_run

    return cmd_run(args)


def _replay_options(p: argparse.ArgumentParser) -> None:
    from streammoe.files.replay import add_options

    add_options(p)


def _demo_options(p: argparse.ArgumentParser) -> None:
    try:
        from streammoe.demo import app
    except ImportError:  # the demo is an optional extra (streammoe[demo]); the production image has none of it
        _missing(p, "the demo is not installed: pip install 'streammoe[demo]'")
    else:
        app.add_options(p)


def _register_bench(p: argparse.ArgumentParser) -> None:
    """`streammoe bench` runs the benchmarks of a source checkout; an installed image has none (they are not shipped)."""
    root = Path(__file__).resolve().parent.parent
    if (root / "benchmarks" / "cli.py").is_file():
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        from benchmarks.cli import add_options

        add_options(p)
        return
    _missing(
        p,
        "the benchmarks are not installed: they live in benchmarks/ of a source checkout (git clone, then ./dev bench)",
    )


# The subcommands that live beside their code: the daemon, replay, the demo, the benchmarks. Each one's module is
# imported (and its options added) only when that command runs: they import the daemon, Kafka, torch or the
# benchmarks, which `--help`, fit and score, and their one-line errors, should not wait for (seconds on a loaded box).
EXTRA_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "run": ("run the streaming daemon (settings from STREAMMOE_* variables)", _run_options),
    "replay": ("push a series file through Kafka as JSON records", _replay_options),
    "demo": ("the whole pipeline on a simulated pump, with an embedded broker", _demo_options),
    "bench": (
        "quality benchmark (tracks T1-T4, SPLICE) with peers side by side; --speed for throughput",
        _register_bench,
    ),
}


def _missing(p: argparse.ArgumentParser, message: str) -> None:
    """A command whose code is not installed: whatever it is given, it says so (exit 2)."""
    p.description = message
    p.set_defaults(func=lambda _args: _fail(message), takes_anything=True)


def _fail(message: str) -> int:
    print(f"streammoe: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Run one command; an error the user can fix (a missing file, a bad option or setting, an unloadable model)
    is one line on stderr and exit status 2, never a traceback."""
    from streammoe.config import SettingsError
    from streammoe.files.series import SeriesFormatError
    from streammoe.state.errors import ModelLoadError

    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(next((a for a in argv if not a.startswith("-")), ""))
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "takes_anything", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")  # as parse_args says it
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (UsageError, SeriesFormatError, ModelLoadError, SettingsError, OSError) as e:
        message = (
            " ".join(str(e).split()) if not isinstance(e, OSError) or not e.filename else f"{e.filename}: {e.strerror}"
        )
        print(f"streammoe {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
