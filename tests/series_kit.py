"""Labelled series files in the evaluation protocol's layout (a timestamp, one column per channel, an optional
label; gzip when the name ends in .gz): what the fit/score command-line tests and the bench runners' tests feed."""

from __future__ import annotations

import csv
import gzip

import numpy as np


def write_series(path, values: np.ndarray, labels: np.ndarray | None) -> None:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            ["timestamp", *[f"ch{i}" for i in range(values.shape[1])], *(["label"] if labels is not None else [])]
        )
        for i, row in enumerate(values):
            w.writerow([f"t{i}", *[f"{v:.5f}" for v in row], *([int(labels[i])] if labels is not None else [])])
