"""Simulated process runs written as series files (gzip CSV: `timestamp`, the channels, `label`).

`write_dataset` writes the standard development set of docs/process-simulator.md: per mode a normal training
run, a normal test run and one run per fault kind, with a manifest naming each file's mode and fault, so the
command line (`streammoe fit` / `score`) can be run on the simulator exactly as on plant data.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streammoe.testing.process import FAULT_KINDS, MODES, Fault, Run, simulate

START = np.datetime64("2026-01-01T00:00:00")
SAMPLE_S = 60


def timestamps(n: int, offset: int = 0) -> np.ndarray:
    """One record a minute from START, as 'YYYY-MM-DD HH:MM:SS' strings."""
    t = START + (np.arange(n) + offset) * np.timedelta64(SAMPLE_S, "s")
    return np.char.replace(np.datetime_as_string(t, unit="s"), "T", " ")


def write_series(path: str | Path, run: Run, offset: int = 0) -> Path:
    """Write `run` in the evaluation layout; gzip when the name ends in .gz. Seven significant digits keep every
    channel's noise resolved and a parked valve an exact 0."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = io.StringIO()
    np.savetxt(body, run.values, fmt="%.7g", delimiter=",")
    rows = body.getvalue().splitlines()
    ts = timestamps(len(rows), offset)
    header = ",".join(("timestamp", *run.channels, "label"))
    text = "\n".join([header, *(f"{t},{r},{int(y)}" for t, r, y in zip(ts, rows, run.labels))]) + "\n"
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8", compresslevel=6) as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@dataclass(frozen=True)
class DatasetSpec:
    """Sizes of the standard development set: records per normal run, per fault run and before the fault."""

    train: int = 2400
    test: int = 2400
    fault_run: int = 1800
    fault_start: int = 600
    modes: Sequence[int] = tuple(range(len(MODES)))
    kinds: Sequence[str] = FAULT_KINDS


def dataset_runs(seed: int = 0, spec: DatasetSpec | None = None) -> list[tuple[str, dict, Run]]:
    """(file stem, manifest entry, run) of every run of the set; seeds are derived from `seed`, one per run."""
    spec = spec or DatasetSpec()
    out: list[tuple[str, dict, Run]] = []
    for m in spec.modes:
        base = seed * 1000 + m * 100
        for part, n, s in (("train", spec.train, base), ("test", spec.test, base + 1)):
            entry = {"mode": m, "mode_name": MODES[m].name, "part": part, "fault": None, "seed": s}
            out.append((f"mode{m}.{part}", entry, simulate(m, n, seed=s)))
        for j, kind in enumerate(spec.kinds):
            s = base + 10 + j
            fault = Fault(kind, spec.fault_start)
            entry = {
                "mode": m,
                "mode_name": MODES[m].name,
                "part": "fault",
                "fault": kind,
                "fault_start": spec.fault_start,
                "seed": s,
            }
            out.append((f"mode{m}.fault-{kind}", entry, simulate(m, spec.fault_run, faults=[fault], seed=s)))
    return out


def write_dataset(root: str | Path, seed: int = 0, spec: DatasetSpec | None = None) -> Path:
    """Write the set under `root` (one .csv.gz per run and manifest.json); returns the manifest's path."""
    root = Path(root)
    files: dict[str, dict] = {}
    for stem, entry, run in dataset_runs(seed, spec):
        write_series(root / f"{stem}.csv.gz", run)
        files[f"{stem}.csv.gz"] = entry
    manifest = {"simulator": "streammoe.testing.process", "seed": seed, "files": files}
    path = root / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m streammoe.testing.process_files OUT [--seed N]`: write the development set."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(write_dataset(args.out, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
