"""The data of the multi-mode tracks: normal and fault runs per mode, and runs that switch modes.

Two sources give the same shape. The process simulator (streammoe.testing.process) is generated in memory from a
seed; a folder of series files with a manifest.json (what streammoe.testing.process_files and
benchmarks/tep_data.py write) is read from disk. Labels stay here and in the metrics; no method sees them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streammoe.files.series import read_series
from streammoe.testing.process import MODES, simulate
from streammoe.testing.process_files import DatasetSpec, dataset_runs


@dataclass
class LabelledRun:
    name: str
    mode: int
    fault: str | None  # None for a normal run
    values: np.ndarray
    labels: np.ndarray


@dataclass
class SwitchRun:
    """`values` is mode `a` for `switch_at` records, then mode `b`; every record is normal operation."""

    a: int
    b: int
    values: np.ndarray
    switch_at: int


@dataclass
class MultiModeSet:
    source: str
    channels: list[str]
    mode_names: dict[int, str]
    train: dict[int, np.ndarray]
    tests: list[LabelledRun] = field(default_factory=list)  # normal test runs and fault runs
    switches: dict[tuple[int, int], SwitchRun] = field(default_factory=dict)

    def switch(self, a: int, b: int, records: int, seed: int) -> SwitchRun:
        """A run of `records` of mode a then `records` of mode b: simulated with its real transient when the source
        is the simulator, else a recorded switch run, else a's and b's normal test runs spliced end to end."""
        if (a, b) in self.switches:
            return self.switches[(a, b)]
        if self.source.startswith("simulator"):
            run = simulate([(a, records), (b, records)], seed=seed)
            return SwitchRun(a, b, run.values, records)
        normal = {r.mode: r for r in self.tests if r.fault is None}
        if a not in normal or b not in normal:
            raise ValueError(f"{self.source}: no switch run {a}->{b} and no normal test runs of both modes")
        va, vb = normal[a].values[:records], normal[b].values[:records]
        return SwitchRun(a, b, np.concatenate([va, vb]), len(va))


def simulator_set(seed: int = 0, spec: DatasetSpec | None = None) -> MultiModeSet:
    spec = spec or DatasetSpec()
    data = MultiModeSet(
        f"simulator (streammoe.testing.process, seed {seed})", [], {m: MODES[m].name for m in spec.modes}, {}
    )
    for stem, entry, run in dataset_runs(seed, spec):
        data.channels = list(run.channels)
        if stem.endswith(".train"):
            data.train[entry["mode"]] = run.values
        else:
            data.tests.append(LabelledRun(stem, entry["mode"], entry["fault"], run.values, run.labels))
    return data


def folder_set(root: Path) -> MultiModeSet:
    """Read a folder whose manifest.json maps file names to {mode, part (train/test/fault/switch), fault, ...}."""
    manifest = json.loads((root / "manifest.json").read_text())
    data = MultiModeSet(f"folder {root}", [], {}, {})
    for name, entry in sorted(manifest["files"].items()):
        s = read_series(root / name)
        data.channels = s.channels
        labels = s.labels if s.labels is not None else np.zeros(len(s.values), np.int8)
        part = entry.get("part") or ("train" if ".train" in name else "fault" if entry.get("fault") else "test")
        if part == "switch":
            a, b = entry["switch"]
            for mode, name in zip((a, b), entry.get("mode_names", ())):
                data.mode_names.setdefault(int(mode), name)
            data.switches[(a, b)] = SwitchRun(a, b, s.values, int(entry["switch_at"]))
            continue
        mode = int(entry["mode"])
        data.mode_names.setdefault(mode, entry.get("mode_name", str(mode)))
        if part == "train":
            data.train[mode] = s.values
        else:
            data.tests.append(LabelledRun(name.removesuffix(".csv.gz"), mode, entry.get("fault"), s.values, labels))
    if not data.train:
        raise ValueError(f"{root}/manifest.json names no training runs")
    return data
