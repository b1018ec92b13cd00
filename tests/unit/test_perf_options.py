"""`streammoe bench --perf`'s options (benchmarks/perf_options.py): the latency run measures the default model
unless a flag asks for the full pass or the cascade, and the two flags exclude each other."""

from __future__ import annotations

import argparse

import pytest

from benchmarks.cli import add_options
from benchmarks.perf_options import PerfOptions, from_args
from streammoe.model.config import ModelConfig


def options(*flags: str) -> PerfOptions:
    p = argparse.ArgumentParser()
    add_options(p)
    return from_args(p.parse_args(["--perf", "--perf-latency", *flags]))


def test_the_latency_run_measures_the_default_model() -> None:
    assert PerfOptions().latency_model_cascade() is ModelConfig().cascade.enabled
    opts = options()
    assert opts.latency and opts.latency_cascade is None
    assert opts.latency_model_cascade() is ModelConfig().cascade.enabled


@pytest.mark.parametrize(("flag", "cascade"), [("--perf-latency-full-pass", False), ("--perf-latency-cascade", True)])
def test_a_flag_picks_the_full_pass_or_the_cascade_whatever_the_default(flag: str, cascade: bool) -> None:
    assert options(flag).latency_model_cascade() is cascade


def test_the_full_pass_and_the_cascade_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        options("--perf-latency-full-pass", "--perf-latency-cascade")
    assert exit_.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
