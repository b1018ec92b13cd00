"""The fast-path bench's report: the markdown table, the latency lines, the plot, and the files written."""

from __future__ import annotations

import json
from pathlib import Path


def markdown(result: dict) -> str:
    t, s = result["transport"], result["setup"]
    lines = [
        "## Fast path (`streammoe bench --perf`)",
        "",
        (
            f"{s['records']} records x {s['channels']} channels from {s['modes_in_data']} modes, batches of "
            f"{s['max_batch']}, torch {s['torch']} with {s['torch_threads']} thread(s), {s['cpu_count']} CPUs, "
            f"load average at the end {', '.join(f'{v:.1f}' for v in s['load_average'])}."
        ),
        "",
        (
            f"- produce: {t['produce_rec_s']:.0f} rec/s; raw consume: {t['consume_median']:.0f} rec/s "
            f"(runs {', '.join(f'{v:.0f}' for v in t['consume_rec_s'])}); consume + decode: "
            f"{t['consume_decode_median']:.0f} rec/s (runs {', '.join(f'{v:.0f}' for v in t['consume_decode_rec_s'])})"
        ),
        f"- {t['hst']}: {t['hst_rec_s']:.0f} rec/s",
        f"- {t['hst15']}: {t['hst15_rec_s']:.0f} rec/s",
        "",
        "| K (active) | S | score rec/s | learn rec/s | end to end rec/s | e2e / consume+decode | e2e / HST h8 | e2e / HST h15 |"
        + (
            " serial e2e rec/s | serial / consume+decode |"
            if any("e2e_serial_rec_s" in r for r in result["grid"])
            else ""
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|"
        + ("---:|---:|" if any("e2e_serial_rec_s" in r for r in result["grid"]) else ""),
    ]
    cascade = any("e2e_cascade_rec_s" in r for r in result["grid"])
    if cascade:
        lines[-2] += " cascade: rescored | score rec/s | end to end rec/s | e2e / consume+decode |"
        lines[-1] += "---:|---:|---:|---:|"
    for r in result["grid"]:
        line = (
            f"| {r['k']} ({r['k_active']}) | {r['s']} | {r['score_rec_s']:.0f} | {r['learn_rec_s']:.0f} | "
            f"{r.get('e2e_rec_s', 0):.0f} | {r.get('e2e_vs_consume_decode', 0):.2f} | {r.get('e2e_vs_hst', 0):.1f}x | "
            f"{r.get('e2e_vs_hst15', 0):.0f}x |"
        )
        if "e2e_serial_rec_s" in r:
            line += f" {r['e2e_serial_rec_s']:.0f} | {r['e2e_serial_vs_consume_decode']:.2f} |"
        if cascade:
            line += (
                f" {r['cascade_rescored']:.3f} | {r['score_cascade_rec_s']:.0f} | {r['e2e_cascade_rec_s']:.0f} | "
                f"{r['e2e_cascade_vs_consume_decode']:.2f} |"
                if "e2e_cascade_rec_s" in r
                else " | | | |"
            )
        lines.append(line)
    var = result.get("variants")
    if var:
        lines += [
            "",
            f"E-step variants, K={var['k']} S={var['s']}, same batches and noise, 1 % planted anomalies:",
            "",
            "| variant | score rec/s | vs float32 | first batch s | same decision as float32 | planted flagged | others flagged |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        f32 = var["runs"][0]["score_rec_s"]
        for v in var["runs"]:
            lines.append(
                f"| {v['variant']} | {v['score_rec_s']:.0f} | {v['score_rec_s'] / f32:.2f} | {v['first_batch_s']:.1f} | "
                f"{v['agree']:.4f} | {v['flagged_planted']:.3f} | {v['flagged_other']:.4f} |"
            )
    lines += latency_markdown(result.get("latency"))
    return "\n".join(lines) + "\n"


def latency_markdown(lat: dict | None) -> list[str]:
    """The produce -> alert lines of the report (none without a latency run)."""
    if not lat:
        return []
    model = f"K={lat['k']} S={lat['s']}" + (", cascade on" if lat.get("cascade") else "")
    lines = [
        "",
        (
            f"Produce -> alert latency at {lat['offered_rec_s']} rec/s offered (achieved "
            f"{lat['achieved_produce_rec_s']:.0f}) for {lat['seconds']:.0f} s, {model}, "
            f"max_wait_ms {lat['max_wait_ms']}: {lat['alerts']} alerts, {_quantiles_text(lat)}"
            + (
                f"; {lat['records_in']} of {lat['produced']} records judged when the reader stopped"
                if "produced" in lat
                else ""
            )
        ),
    ]
    floor = lat.get("floor")
    if floor:
        lines += [
            "",
            (
                f"The same path through a relay that does no work (the daemon's consumer and producer settings, "
                f"every 100th record forwarded; achieved {floor['achieved_produce_rec_s']:.0f} rec/s): "
                f"{_quantiles_text(floor)}; daemon p99 / relay p99 = "
                f"{lat.get('p99_ms', float('nan')) / floor.get('p99_ms', float('nan')):.2f}"
            ),
        ]
    return lines


def _quantiles_text(figures: dict) -> str:
    return ", ".join(
        f"{name} {figures.get(f'{name}_ms', float('nan')):.0f} ms" for name in ("p50", "p90", "p99", "max")
    )


def plot(result: dict, path: Path) -> Path | None:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = result["transport"]
    samples = sorted({r["s"] for r in result["grid"]})
    fig, axes = plt.subplots(1, len(samples), figsize=(6 * len(samples), 4.2), sharey=True, squeeze=False)
    for ax, s in zip(axes[0], samples):
        rows = [r for r in result["grid"] if r["s"] == s]
        ks = [r["k"] for r in rows]
        for key, label, style in (
            ("score_rec_s", "score only", "o-"),
            ("learn_rec_s", "learn only", "s-"),
            ("e2e_rec_s", "end to end", "D-"),
            ("e2e_serial_rec_s", "end to end, serial", "x--"),
        ):
            if all(key in r for r in rows):
                ax.plot(ks, [r[key] for r in rows], style, label=label)
        ax.axhline(t["consume_median"], color="grey", ls=":", label="raw consume")
        ax.axhline(t["consume_decode_median"], color="black", ls="--", label="consume + decode")
        ax.axhline(t["hst_rec_s"], color="tab:red", ls="-.", label="river HST, height 8")
        if "hst15_rec_s" in t:
            ax.axhline(t["hst15_rec_s"], color="tab:red", ls=":", label="river HST, height 15")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_yscale("log")
        ax.set_xlabel("experts K")
        ax.set_title(f"S = {s} importance samples")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("records/s")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(result: dict, out: Path) -> tuple[Path, Path, Path | None]:
    out.mkdir(parents=True, exist_ok=True)
    js = out / "perf.json"
    js.write_text(json.dumps(result, indent=1))
    md = out / "perf.md"
    md.write_text(markdown(result))
    return js, md, plot(result, out / "perf.png")
