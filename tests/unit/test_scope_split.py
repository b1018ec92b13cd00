"""benchmarks.scope_split runs every variant on its own detectors and reports a rate for each (variant, scopes)."""

from __future__ import annotations

import json

from benchmarks.scope_split import main


def test_every_variant_and_scope_count_gets_a_positive_rate(tmp_path, capsys, monkeypatch) -> None:
    # The bench's main configures structlog onto sys.stderr, here pytest's capture, closed after this test: every
    # later test's log line would then fail. The figures do not depend on the logging.
    monkeypatch.setattr("streammoe.logs.configure_logging", lambda *args, **kwargs: None)
    out = tmp_path / "split.json"
    assert (
        main(
            [
                "--min-rows",
                "1,64",
                "--scopes",
                "1,4",
                "--repeats",
                "1",
                "--fit-steps",
                "20",
                "--fit-rows",
                "2000",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rates = json.loads(out.read_text())["records_s"]
    assert set(rates) == {"1", "64"} and all(set(r) == {"1", "4"} for r in rates.values())
    assert all(v > 0 for r in rates.values() for v in r.values())
    assert "learn_min_rows=64: 1 scopes" in capsys.readouterr().out
