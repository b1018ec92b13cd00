"""The capacity bench's report: the tables of a scaleout.json (per-call costs, the split check, the levers, memory
and snapshots, the snapshot topic)."""

from __future__ import annotations

from benchmarks.scaleout_capacity import line_fit


def table(result: dict) -> str:
    lines = []
    ks = list(result["k"])
    sizes = list(next(iter(result["k"].values()))["calls"])
    lines.append("score_many + learn_many per call (median ms; records/s):")
    lines.append("| rows per call | " + " | ".join(f"K={k} ms | K={k} rec/s" for k in ks) + " |")
    lines.append("|---:|" + "---:|---:|" * len(ks))
    for b in sizes:
        cells = []
        for k in ks:
            c = result["k"][k]["calls"][b]
            cells += [f"{c['total_ms']:.2f} ({c['score_ms']:.2f} + {c['learn_ms']:.2f})", f"{c['records_s']:,.0f}"]
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    lines.append(
        "| line: fixed ms + µs/row | "
        + " | ".join(
            f"{result['k'][k]['line']['fixed_ms']:.2f} + {result['k'][k]['line']['per_row_us']:.1f} µs/row | "
            for k in ks
        )
        + " |"
    )
    lines.append("")
    batch = result["setup"]["split_batch"]
    lines.append(
        f"one {batch}-record batch split evenly over S scopes, records/s: S detectors / one detector "
        "called S times / predicted from the per-call medians"
    )
    lines.append("| S | rows/scope | " + " | ".join(f"K={k}" for k in ks) + " |")
    lines.append("|---:|---:|" + "---:|" * len(ks))
    for i, s in enumerate(result["k"][ks[0]]["split"]):
        cells = []
        for k in ks:
            sp = result["k"][k]["split"][i]
            cells.append(
                f"{sp['records_s']:,.0f} / {sp['one_detector_records_s']:,.0f} / {sp['predicted_records_s']:,.0f}"
            )
        lines.append(f"| {s['scopes']} | {s['rows_per_scope']:.1f} | " + " | ".join(cells) + " |")
    for k in ks:
        lev = result["k"][k].get("levers")
        if lev:
            sizes_l = list(next(iter(lev.values())))
            lines.append("")
            lines.append(
                f"K={k}, mean ms per score + learn call with the settings that cut the fixed cost (interleaved):"
            )
            lines.append("| setting | " + " | ".join(f"{b} rows" for b in sizes_l) + " |")
            lines.append("|---|" + "---:|" * len(sizes_l))
            for name, got in lev.items():
                lines.append(f"| {name} | " + " | ".join(f"{got[b]:.2f}" for b in sizes_l) + " |")
    lines.append("")
    lines.append("memory and snapshot per scope:")
    lines.append(
        "| K | RSS growth N="
        + "/".join(str(n) for n in result["setup"]["memory_scopes"])
        + " (MB) | MB/scope (slope) | tensors MB (model + Adam) | snapshot bytes | chunks | pack ms "
        "(without fsync) | unpack ms |"
    )
    lines.append("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k in ks:
        m, s = result["k"][k]["memory"], result["k"][k]["snapshot"]
        growth = "/".join(f"{v:.1f}" for v in m["growth_mb"].values())
        lines.append(
            f"| {k} | {growth} | {m['mb_per_scope']:.2f} | {m['model_tensor_mb']:.2f} + {m['adam_tensor_mb']:.2f}"
            f" | {s['bytes']:,} | {s['chunks']} | {s['pack_ms']:.1f} ({s['pack_ms_without_fsync']:.1f}) | {s['unpack_ms']:.1f} |"
        )
    if "broker" in result["k"][ks[0]]:
        lines.append("")
        lines.append("snapshot topic on Tansu, N scopes in one partition (SnapshotWriter.write of all N; read_latest):")
        lines.append("| K | N | write s | write ms/scope | read s | read ms/scope |")
        lines.append("|---:|---:|---:|---:|---:|---:|")
        for k in ks:
            for s in result["k"][k]["broker"]["scopes"]:
                lines.append(
                    f"| {k} | {s['scopes']} | {s['write_s']:.2f} | {s['write_ms_per_scope']:.1f} | "
                    f"{s['read_s']:.2f} | {s['read_ms_per_scope']:.1f} |"
                )
        for k in ks:
            sc = result["k"][k]["broker"]["scopes"]
            wf, wp = line_fit([x["scopes"] for x in sc], [x["write_s"] for x in sc])
            rf, rp = line_fit([x["scopes"] for x in sc], [x["read_s"] for x in sc])
            lines.append(
                f"K={k} lines over N: write {wf * 1e3:.0f} ms + {wp * 1e3:.1f} ms/scope; "
                f"read {rf * 1e3:.0f} ms + {rp * 1e3:.1f} ms/scope"
            )
        for k in ks:
            rounds = result["k"][k]["broker"]["rounds"]
            if rounds:
                lines.append("")
                lines.append(
                    f"uncompacted log, K={k}, {rounds[0]['scopes']} scopes: read_latest after R rounds of snapshots"
                )
                lines.append("| R | log MB | read s |")
                lines.append("|---:|---:|---:|")
                lines += [f"| {r['rounds']} | {r['log_mb']:.0f} | {r['read_s']:.2f} |" for r in rounds]
                rf, rp = line_fit([r["log_mb"] for r in rounds], [r["read_s"] for r in rounds])
                lines.append(f"line: {rf:.2f} s + {rp * 1e3:.1f} ms per MB of log")
    return "\n".join(lines)
