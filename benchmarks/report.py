"""Write a benchmark run: a markdown table per track, a JSON of every per-series number, PNG plots."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np

from benchmarks.metrics import finite_scores
from benchmarks.peers import Extras
from benchmarks.tracks import TrackResult

PLOT_METHODS = ("streammoe",)

COLUMNS = {
    "T1": [
        ("f1", "F1"),
        ("far", "FAR"),
        ("mar", "MAR"),
        ("auc_pr", "AUC-PR (mean/file)"),
        ("auc_roc", "AUC-ROC (mean/file)"),
        ("best_f1", "best-F1 (bound, mean/file)"),
    ],
    "T2": [
        ("auc_pr", "AUC-PR"),
        ("auc_roc", "AUC-ROC"),
        ("f1", "F1"),
        ("far", "FAR"),
        ("mar", "MAR"),
        ("best_f1", "best-F1 (bound)"),
    ],
    "T3": [
        ("far_b_train_2nd_half", "FAR b.train 2nd half"),
        ("auc_pr", "AUC-PR"),
        ("auc_roc", "AUC-ROC"),
        ("f1", "F1"),
        ("best_f1", "best-F1 (bound)"),
        ("auc_pr_ratio", "AUC-PR / T2"),
        ("auc_roc_ratio", "AUC-ROC / T2"),
        ("f1_ratio", "F1 / T2"),
    ],
    "T4A": [
        ("far", "FAR (mean/mode)"),
        ("far_prefault", "FAR pre-fault"),
        ("recall", "recall"),
        ("recall_at_far1", "recall@FAR≤1%"),
        ("recall_at_far1_calibrated", "recall@FAR≤1% (calibrated)"),
        ("auc_roc", "AUC-ROC (mean/mode)"),
        ("auc_roc_pooled", "AUC-ROC pooled"),
        ("k_selected", "K"),
    ],
    "T4B": [
        ("far_old", "FAR old mode"),
        ("far_new_1st_half", "FAR new 1st half"),
        ("far_new_2nd_half", "FAR new 2nd half"),
        ("far_new_last_tenth", "FAR new last tenth"),
        ("switches_with_mode_added", "switches with mode_added"),
        ("records_to_mode_added_max", "records to mode_added (max)"),
        ("mode_added", "mode_added (mean)"),
        ("experts_at_end", "experts at end (mean)"),
    ],
}
COLUMNS["SPLICE"] = COLUMNS["T4B"]
T4A_KIND_PREFIX = "recall_"
PER_SERIES = {
    "T1": ("auc_pr", "f1"),
    "T2": ("auc_pr", "f1"),
    "T3": ("far_b_train_2nd_half", "auc_pr"),
    "T4A": ("flag_rate", "auc_roc"),
    "T4B": ("far_new_2nd_half", "records_to_mode_added"),
    "SPLICE": ("far_new_2nd_half", "records_to_mode_added"),
}


def _fmt(v: object) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def track_markdown(track: TrackResult) -> str:
    cols = COLUMNS[track.track]
    lines = [
        f"## {track.title}",
        "",
        "| method | " + " | ".join(c for _, c in cols) + " | series | wall s |",
        "|---|" + "---:|" * (len(cols) + 2),
    ]
    for m, s in track.summary.items():
        cells = [_fmt(s.get(k)) for k, _ in cols]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {s['n_series']} | {s['wall_s']:.0f} |")
    if track.track == "T4A":
        lines += _t4a_breakdown(track)
    a, b = PER_SERIES[track.track]
    methods = list(track.summary)
    lines += [
        "",
        f"Per series ({a} / {b}):",
        "",
        "| series | " + " | ".join(methods) + " |",
        "|---|" + "---:|" * len(methods),
    ]
    series = list(dict.fromkeys(r.series for r in track.runs))
    by = {(r.series, r.method): r for r in track.runs}
    for name in series:
        cells = []
        for m in methods:
            r = by.get((name, m))
            cells.append("" if r is None else f"{_fmt(r.metrics.get(a))} / {_fmt(r.metrics.get(b))}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    cal = {m: s["auc_pr_calibrated"] for m, s in track.summary.items() if s.get("auc_pr_calibrated") is not None}
    if cal:
        lines += [
            "",
            "AUC-PR of streammoe's calibrated score (-log10 p, what its decision thresholds) instead of the NLL: "
            + ", ".join(f"{m} {_fmt(v)}" for m, v in cal.items())
            + ".",
        ]
    lines += events_markdown(track)
    lines += ["", "Methods:", ""] + [f"- **{m}**: {d}" for m, d in track.methods.items()]
    if track.notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in track.notes]
    return "\n".join(lines) + "\n"


def _t4a_breakdown(track: TrackResult) -> list[str]:
    """Recall per fault kind (at the method's own threshold / at FAR <= 1 %) and FAR per mode, one row per method."""
    any_summary = next(iter(track.summary.values()), {})
    kinds = sorted(
        k.removeprefix("recall_at_far1_")
        for k in any_summary
        if k.startswith("recall_at_far1_") and k != "recall_at_far1_calibrated"
    )
    modes = sorted(k.removeprefix("far_mode") for k in any_summary if k.startswith("far_mode"))
    lines = [
        "",
        "Recall per fault kind (own threshold / at FAR ≤ 1 %):",
        "",
        "| method | " + " | ".join(kinds) + " |",
        "|---|" + "---:|" * len(kinds),
    ]
    for m, s in track.summary.items():
        cells = [f"{_fmt(s.get(T4A_KIND_PREFIX + k))} / {_fmt(s.get('recall_at_far1_' + k))}" for k in kinds]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "FAR per mode (own threshold) / AUC-ROC per mode:",
        "",
        "| method | " + " | ".join(f"mode {k}" for k in modes) + " |",
        "|---|" + "---:|" * len(modes),
    ]
    for m, s in track.summary.items():
        cells = [f"{_fmt(s.get('far_mode' + k))} / {_fmt(s.get('auc_roc_mode' + k))}" for k in modes]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


EVENT_COLUMNS = [
    ("segment_recall", "segments hit"),
    ("false_per_10k", "false / 10k normal"),
    ("per_detected_segment", "incidents / detected segment"),
    ("median_delay", "median delay (rows)"),
    ("normal_inside", "normal rows inside"),
    ("normal_flagged", "normal rows flagged"),
    ("incidents", "incidents"),
]


def events_markdown(track: TrackResult) -> list[str]:
    """Event-level table: each method's decisions grouped by the incident tracker and by gaps under 10 rows."""
    rows = []
    for m, s in track.summary.items():
        for part, by_grouping in sorted(s.get("events", {}).items()):
            for grouping, e in by_grouping.items():
                rows.append(
                    f"| {m} | {part} | {grouping} | " + " | ".join(_fmt(e.get(k)) for k, _ in EVENT_COLUMNS) + " |"
                )
    if not rows:
        return []
    title = (
        "Event level (pooled; `incidents`: the daemon's incident tracker at its defaults, row index as offset; "
        "`gap10`: flagged rows grouped while gaps are under 10 rows):"
    )
    return [
        "",
        title,
        "",
        "| method | data | grouping | " + " | ".join(c for _, c in EVENT_COLUMNS) + " |",
        "|---|---|---|" + "---:|" * len(EVENT_COLUMNS),
        *rows,
    ]


def _json_default(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_report(out: Path, tracks: list[TrackResult], header: dict, speed: dict | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    parts = ["# streammoe benchmark", "", "```", header.get("command", ""), "```", ""]
    parts += [f"- {k}: {v}" for k, v in header.items() if k != "command"] + [""]
    parts += [track_markdown(t) for t in tracks]
    if speed is not None:
        parts.append(speed_markdown(speed))
    (out / "report.md").write_text("\n".join(parts))
    payload = {"header": header, "tracks": {t.track: asdict(t) for t in tracks}, "speed": speed}
    (out / "results.json").write_text(json.dumps(payload, indent=1, default=_json_default))
    return out / "report.md"


def speed_markdown(speed: dict) -> str:
    lines = [
        "## Scoring throughput (MixtureDetector.score_many alone)",
        "",
        f"{speed['setup']}",
        "",
        "| importance samples S | records/s (median) | min | max | repeats |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in speed["runs"]:
        lines.append(f"| {r['n_samples']} | {r['median']:.0f} | {r['min']:.0f} | {r['max']:.0f} | {r['repeats']} |")
    return "\n".join(lines) + "\n"


def plot_series(
    out: Path,
    track: str,
    series: str,
    method: str,
    labels: np.ndarray,
    scores: np.ndarray,
    flagged: np.ndarray,
    extras: Extras,
    offset: int,
    marks: list,
) -> Path | None:
    """Score over time with the labelled rows shaded, the threshold and alarms, and the mode index."""
    if method not in PLOT_METHODS:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(offset, offset + len(scores))
    has_cal = extras.calibrated_score is not None
    n_panels = 2 + int(has_cal)
    fig, axes = plt.subplots(n_panels, 1, figsize=(14, 2.4 * n_panels), sharex=True)
    lab = np.asarray(labels).astype(bool)
    for ax in axes:
        ax.fill_between(
            x,
            0,
            1,
            where=lab,
            transform=ax.get_xaxis_transform(),
            color="tab:orange",
            alpha=0.25,
            step="mid",
            linewidth=0,
            label="labelled anomalous",
        )
        for row, text in marks:
            ax.axvline(row, color="k", linestyle=":", linewidth=1)
            ax.text(row, 1.0, f" {text}", transform=ax.get_xaxis_transform(), fontsize=7, va="top")
    ax = axes[0]
    ax.plot(x, finite_scores(scores), linewidth=0.6, color="tab:blue")
    ax.set_yscale("symlog")
    ax.set_ylabel("score (NLL)")
    ax.legend(loc="upper left", fontsize=7)
    if has_cal:
        ax = axes[1]
        ax.plot(x, np.minimum(extras.calibrated_score, 50), linewidth=0.6, color="tab:purple")
        if extras.calibrated_threshold is not None:
            ax.axhline(extras.calibrated_threshold, color="r", linewidth=0.8, label="threshold")
        alarm = np.asarray(flagged).astype(bool)
        ax.scatter(x[alarm], np.zeros(alarm.sum()), marker="|", color="r", s=30, label="is_anomaly")
        ax.set_ylabel("-log10 p (cap 50)")
        ax.legend(loc="upper left", fontsize=7)
    ax = axes[-1]
    if extras.mode is not None:
        ax.step(x, extras.mode, where="mid", linewidth=0.7, color="tab:green", label="mode")
    if extras.n_experts is not None:
        ax.step(x, extras.n_experts, where="mid", linewidth=0.7, color="tab:gray", label="active experts")
    ax.set_ylabel("expert")
    ax.set_xlabel("row")
    ax.legend(loc="upper left", fontsize=7)
    fig.suptitle(f"{track} {series} — {method}", fontsize=10)
    fig.tight_layout()
    path = out / "plots" / track / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', series)}__{method}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
