"""The fit/score command-line contract of the evaluation protocol."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from series_kit import write_series

from streammoe.cli import main


def read_scores(path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture()
def series(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.normal(0, 1, (1500, 3))
    test = rng.normal(0, 1, (400, 3))
    test[300:320, 2] += 12.0
    labels = np.zeros(400, dtype=int)
    labels[300:320] = 1
    write_series(tmp_path / "train.csv.gz", train, np.zeros(1500, dtype=int))
    write_series(tmp_path / "test.csv.gz", test, labels)
    write_series(tmp_path / "test_nolabel.csv", test, None)
    return tmp_path


FAST = ["--fit-steps", "300", "--k-max", "2", "--n-samples", "4"]


def test_fit_then_score_with_model(series) -> None:
    assert main(["fit", "--data", str(series / "train.csv.gz"), "--out", str(series / "model"), *FAST]) == 0
    out = series / "scores.csv"
    assert main(["score", "--data", str(series / "test.csv.gz"), "--model", str(series / "model"), "--out", str(out)]) == 0
    rows = read_scores(out)
    assert len(rows) == 400
    assert [r["timestamp"] for r in rows] == [f"t{i}" for i in range(400)]
    assert {"timestamp", "score", "is_anomaly", "mode", "mode_entropy", "p_value"} <= set(rows[0])
    flagged = np.array([int(r["is_anomaly"]) for r in rows])
    assert flagged[300:320].all()
    assert flagged[:300].mean() < 0.05
    score = np.array([float(r["score"]) for r in rows])
    assert score[300:320].min() > np.percentile(score[:300], 99)
    assert rows[305]["top_channels"].startswith("ch2:")


def test_label_column_never_reaches_the_model(series) -> None:
    main(["fit", "--data", str(series / "train.csv.gz"), "--out", str(series / "model"), *FAST])
    a, b = series / "a.csv", series / "b.csv"
    main(["score", "--data", str(series / "test.csv.gz"), "--model", str(series / "model"), "--out", str(a)])
    main(["score", "--data", str(series / "test_nolabel.csv"), "--model", str(series / "model"), "--out", str(b)])
    assert read_scores(a) == read_scores(b)


def test_warmup_without_model(series) -> None:
    out = series / "w.csv"
    assert main(["score", "--data", str(series / "test.csv.gz"), "--warmup", "200", "--out", str(out), *FAST]) == 0
    rows = read_scores(out)
    assert all(r["is_anomaly"] == "0" for r in rows[:200])
    assert np.mean([int(r["is_anomaly"]) for r in rows[300:320]]) > 0.9


def test_score_without_model_or_warmup_is_a_clear_error(series) -> None:
    with pytest.raises(SystemExit, match="--warmup"):
        main(["score", "--data", str(series / "test.csv.gz"), "--out", str(series / "x.csv")])
