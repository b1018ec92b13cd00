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
    assert (
        main(["score", "--data", str(series / "test.csv.gz"), "--model", str(series / "model"), "--out", str(out)]) == 0
    )
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
    # The anomalous stretch is one incident in the `incident` column; rows outside any incident are empty.
    incidents = [r["incident"] for r in rows]
    assert len(set(incidents[300:320])) == 1 and incidents[300] != ""
    assert incidents.count(incidents[300]) < 60  # it ends with the stretch (plus its debounce window)
    assert sum(i != "" for i in incidents[:290]) < 30


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


def test_score_without_model_or_warmup_is_a_clear_error(series, capsys) -> None:
    assert main(["score", "--data", str(series / "test.csv.gz"), "--out", str(series / "x.csv")]) == 2
    assert (
        capsys.readouterr().err
        == "streammoe score: error: without --model, give --warmup N (rows to learn from before scoring)\n"
    )


@pytest.mark.parametrize("command", ["fit", "score"])
def test_a_missing_input_file_is_one_line_and_a_non_zero_exit(tmp_path, command: str) -> None:
    """Run as a user would (a subprocess): one line on stderr, exit 2, no traceback."""
    import subprocess
    import sys

    args = ["--data", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "out")] + (
        ["--warmup", "10"] if command == "score" else []
    )
    run = subprocess.run(
        [sys.executable, "-m", "streammoe.cli", command, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert run.stderr.splitlines() == [f"streammoe {command}: error: {tmp_path / 'nope.csv'}: no such file"]


def test_help_and_the_one_line_errors_import_neither_torch_nor_the_daemon(tmp_path) -> None:
    """Only the command being run imports what it needs: `--help`, `run --help` and fit/score's file errors wait for
    neither torch nor the daemon nor the benchmarks (they took ~12 s on a loaded box while the parser imported them
    all)."""
    import subprocess
    import sys

    nope = str(tmp_path / "nope.csv")
    probe = (
        "import contextlib, sys\n"
        "from streammoe.cli import main\n"
        f"assert main(['fit', '--data', {nope!r}, '--out', 'm']) == 2\n"
        f"assert main(['score', '--data', {nope!r}, '--out', 's.csv', '--warmup', '10']) == 2\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(None):\n"
        "    main(['--help'])\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(None):\n"
        "    main(['run', '--help'])\n"
        "print(sorted(m for m in ('torch', 'streammoe.daemon', 'benchmarks', 'confluent_kafka') if m in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True, timeout=120)
    assert run.stdout.strip() == "[]"


def test_a_command_that_is_not_installed_says_so_whatever_its_options(monkeypatch, capsys) -> None:
    from streammoe import cli

    monkeypatch.setitem(cli.EXTRA_COMMANDS, "bench", ("help", lambda p: cli._missing(p, "not installed here")))
    assert main(["bench", "--tracks", "T1", "extra"]) == 2
    assert capsys.readouterr().err == "streammoe: not installed here\n"
    with pytest.raises(SystemExit):  # any other command still refuses what it does not know
        main(["fit", "--data", "x.csv", "--out", "m", "--no-such-option"])
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (
            ["fit", "--data", "x.csv", "--out", "m", "--k-max", "0"],
            "--k-max: Input should be greater than or equal to 1",
        ),
        (["bench", "--tracks", "T4A", "--k-max", "0"], "--k-max: Input should be greater than or equal to 1"),
        (["bench", "--tracks", "T9"], "unknown track(s) ['T9']; known: ['T1', 'T2', 'T3', 'T4A', 'T4B', 'SPLICE']"),
    ],
)
def test_a_misconfiguration_is_one_line_and_exit_2_in_every_command(command, message, tmp_path, capsys) -> None:
    assert main([*command, *(["--out", str(tmp_path / "out")] if command[0] == "bench" else [])]) == 2
    assert capsys.readouterr().err == f"streammoe {command[0]}: error: {message}\n"


def test_a_model_that_cannot_be_loaded_is_one_line(series, capsys) -> None:
    (series / "notamodel").mkdir()
    assert (
        main(
            [
                "score",
                "--data",
                str(series / "test.csv.gz"),
                "--model",
                str(series / "notamodel"),
                "--out",
                str(series / "x.csv"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("streammoe score: error: ") and err.count("\n") == 1


def test_every_model_config_field_is_an_option() -> None:
    """Derived from ModelConfig (nested sections too), not written out by hand."""
    from streammoe.cli import build_parser
    from streammoe.model.config import ModelConfig, NoveltyConfig

    fit = build_parser()._subparsers._group_actions[0].choices["fit"]  # type: ignore[union-attr]
    flags = {o for a in fit._actions for o in a.option_strings}
    expected = {"--" + n.replace("_", "-") for n, f in ModelConfig.model_fields.items() if f.annotation in (int, float)}
    expected |= {"--novelty-" + n.replace("_", "-") for n in NoveltyConfig.model_fields}
    assert expected <= flags and "--novelty-min-records" in flags and "--learning-rate" in flags


def test_every_model_option_has_its_description_as_help() -> None:
    """The sections document their fields in attribute docstrings (pydantic's use_attribute_docstrings): a
    docstring that pydantic does not read would leave the option's --help empty."""
    from streammoe.model_options import _field, option_fields

    undocumented = [path for path in option_fields() if not (_field(path).description or "").strip()]
    assert not undocumented
    assert _field(("novelty", "min_records")).description == (
        "Unexplained records needed before a candidate expert is tried (a shorter burst never is)."
    )


def test_fit_honours_the_daemons_model_variables_and_the_command_line_wins(series, monkeypatch, capsys) -> None:
    from streammoe.state.persistence import load_detector

    monkeypatch.setenv("STREAMMOE_MODEL__HIDDEN", "12")
    monkeypatch.setenv("STREAMMOE_MODEL__NOVELTY__MIN_RECORDS", "123")
    monkeypatch.setenv("STREAMMOE_MODEL__LATENT", "3")
    out = series / "model"
    assert main(["fit", "--data", str(series / "train.csv.gz"), "--out", str(out), *FAST, "--latent", "2"]) == 0
    config = load_detector(out).config
    assert (config.hidden, config.novelty.min_records, config.latent, config.k_max) == (12, 123, 2, 2)

    monkeypatch.setenv("STREAMMOE_MODEL__HIDDEN_UNITS", "12")
    assert main(["fit", "--data", str(series / "train.csv.gz"), "--out", str(out), *FAST]) == 2
    assert (
        "STREAMMOE_MODEL__HIDDEN_UNITS: not a setting (did you mean STREAMMOE_MODEL__HIDDEN?)"
        in capsys.readouterr().err
    )


def test_score_with_a_saved_model_refuses_options_it_would_ignore_and_warns_about_the_environment(
    series, monkeypatch, capsys
) -> None:
    model, out = series / "model", series / "s.csv"
    assert main(["fit", "--data", str(series / "train.csv.gz"), "--out", str(model), *FAST]) == 0
    capsys.readouterr()
    base = ["score", "--data", str(series / "test.csv.gz"), "--model", str(model), "--out", str(out)]
    assert main([*base, "--threshold", "0.0001", "--k-max", "2"]) == 2
    err = capsys.readouterr().err
    assert "--threshold 0.0001 (the model has 0.001)" in err and "--k-max" not in err, "same as saved: not refused"
    assert not out.exists()
    monkeypatch.setenv("STREAMMOE_MODEL__THRESHOLD", "0.0001")
    assert main(base) == 0
    assert "ignored: STREAMMOE_MODEL__THRESHOLD=0.0001 (the model has 0.001)" in capsys.readouterr().err


def test_the_incident_column_honours_the_daemons_incident_variables(series, monkeypatch, capsys) -> None:
    """SCORES.csv's incidents are the ones a daemon with the same STREAMMOE_INCIDENTS__* would open."""
    model, out = series / "model", series / "s.csv"
    assert main(["fit", "--data", str(series / "train.csv.gz"), "--out", str(model), *FAST]) == 0
    base = ["score", "--data", str(series / "test.csv.gz"), "--model", str(model), "--out", str(out)]
    assert main(base) == 0 and read_scores(out)[305]["incident"] != "", "by default the stretch is an incident"
    # The 20-row stretch can open no incident when 30 of 30 rows must alarm and no spike opens one at once.
    for name, value in [("OPEN_K", "30"), ("OPEN_N", "30"), ("SPIKE_DEVIATION", "1e9"), ("CRITICAL_WEIGHT", "1")]:
        monkeypatch.setenv(f"STREAMMOE_INCIDENTS__{name}", value)
    assert main(base) == 0 and all(r["incident"] == "" for r in read_scores(out))
    monkeypatch.setenv("STREAMMOE_INCIDENTS__OPEN_K", "3")
    monkeypatch.setenv("STREAMMOE_INCIDENTS__ENABLED", "false")
    assert main(base) == 0 and all(r["incident"] == "" for r in read_scores(out))
    monkeypatch.setenv("STREAMMOE_INCIDENTS__OPEN_KK", "3")
    capsys.readouterr()
    assert main(base) == 2 and "STREAMMOE_INCIDENTS__OPEN_KK: not a setting" in capsys.readouterr().err


@pytest.mark.parametrize("missing", ["rich", "streammoe.demo.app"])
def test_demo_without_the_extra_says_how_to_install_it(missing, monkeypatch, capsys) -> None:
    """Without the demo extra (rich, the embedded broker) or its code, `streammoe demo` names the extra to install."""
    import sys

    for name in [m for m in sys.modules if m.startswith("streammoe.demo")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import <missing>` raise ImportError
    assert main(["demo"]) == 2
    assert "pip install 'streammoe[demo]'" in capsys.readouterr().err


def test_rows_with_empty_cells_are_scored_on_the_cells_present(series) -> None:
    """An empty cell is a missing channel: the row gets a finite score and a mode, `missing_channels` names the
    channel; a row with every cell empty has nothing to score (+inf, flagged, mode -1)."""
    main(["fit", "--data", str(series / "train.csv.gz"), "--out", str(series / "model"), *FAST])
    lines = (series / "test_nolabel.csv").read_text().splitlines()
    cells = [line.split(",") for line in lines]
    for i in (10, 11, 12):
        cells[1 + i][2] = ""  # ch1 empty
    cells[1 + 20][1] = cells[1 + 20][3] = ""  # ch0 and ch2 empty
    cells[1 + 30][1:] = ["", "", ""]
    gappy = series / "gappy.csv"
    gappy.write_text("\n".join(",".join(c) for c in cells) + "\n")
    out = series / "gappy_scores.csv"
    assert main(["score", "--data", str(gappy), "--model", str(series / "model"), "--out", str(out)]) == 0
    rows = read_scores(out)
    assert [r["missing_channels"] for r in rows[9:13]] == ["", "ch1", "ch1", "ch1"]
    assert rows[20]["missing_channels"] == "ch0;ch2"
    for i in (10, 11, 12, 20):
        assert np.isfinite(float(rows[i]["score"])) and int(rows[i]["mode"]) >= 0, rows[i]
        assert rows[i]["is_anomaly"] == "0", rows[i]  # normal rows, normal on what is present
    assert "ch1:0.000" in rows[10]["top_channels"]  # a missing channel takes no share of the misfit
    assert rows[30]["missing_channels"] == "ch0;ch1;ch2" and rows[30]["score"] == "inf" and rows[30]["mode"] == "-1"
    assert sum(r["missing_channels"] != "" for r in rows) == 5
