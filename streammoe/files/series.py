"""Read and write the series files of the evaluation contract (gzip or plain CSV).

Layout: `timestamp`, the numeric channels, then optionally `label`. The label is dropped by name and never
reaches a model; the timestamp is carried through untouched.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RESERVED = ("timestamp", "label")


class SeriesFormatError(ValueError):
    """A series file does not follow the layout."""


@dataclass
class Series:
    path: Path
    timestamps: list[str]
    channels: list[str]
    values: np.ndarray  # (N, C) float32
    labels: np.ndarray | None  # only for evaluation code; models never see it


def open_text(path: Path) -> io.TextIOBase:
    """A series file as text, gzip or plain by its name."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


@contextmanager
def csv_rows(path: Path, error: type[Exception]) -> Iterator[tuple[list[str], Iterator[list[str]]]]:
    """The header and the rows after it of a series file; `error` names a missing, empty or unreadable file."""
    if not path.is_file():
        raise error(f"{path}: no such file")
    with open_text(path) as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise error(f"{path}: empty file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise error(f"{path}: cannot read: {e}") from None
        yield header, reader


def read_series(path: str | Path) -> Series:
    path = Path(path)
    with csv_rows(path, SeriesFormatError) as (header, reader):
        if not header or header[0] != "timestamp":
            raise SeriesFormatError(f"{path}: the first column must be 'timestamp', got {header[:1]}")
        channels = [h for h in header[1:] if h not in RESERVED]
        if not channels:
            raise SeriesFormatError(f"{path}: no channel columns besides timestamp/label")
        label_col = header.index("label") if "label" in header else None
        chan_cols = [i for i, h in enumerate(header) if h not in RESERVED]
        rows = list(reader)
    timestamps = [r[0] for r in rows]
    try:
        values = np.array([[float(r[i]) if r[i] != "" else np.nan for i in chan_cols] for r in rows], dtype=np.float32)
    except (ValueError, IndexError) as e:
        raise SeriesFormatError(f"{path}: a channel value is not a number or a row is short: {e}") from e
    values = values.reshape(len(rows), len(chan_cols))
    labels = np.array([int(float(r[label_col])) for r in rows], dtype=np.int8) if label_col is not None else None
    return Series(path, timestamps, channels, values, labels)


def write_scores(path: str | Path, columns: dict[str, Iterable]) -> None:
    """Write a scores CSV with the given columns (all the same length), in order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(columns)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(names)
        w.writerows(zip(*columns.values()))
