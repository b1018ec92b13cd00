"""The soak's verdict (benchmarks/soak.py) read from its samples: RSS flat within ±10 % of its median after the
warm-up share, the rate between the first and the last busy sample."""

from __future__ import annotations

from benchmarks.soak import Sample, SoakResult


def soak(rss: list[float], warmup_share: float = 0.1) -> SoakResult:
    """A 1000-record soak sampled every 2 s, 100 records a sample, with these RSS readings."""
    result = SoakResult(1000, 4, 2, 8, warmup_share=warmup_share)
    result.samples = [Sample(2.0 * i, 100 * i, mb) for i, mb in enumerate(rss)]
    return result


def test_a_steady_daemon_is_flat_and_the_warm_up_does_not_count() -> None:
    result = soak([40.0, 100.0, 104.0, 98.0, 101.0, 109.0, 100.0])  # 40 MB: before the warm-up share (0 records)
    assert result.rss_after_warmup == [100.0, 104.0, 98.0, 101.0, 109.0, 100.0]
    assert result.rss_median_mb == 100.5
    assert result.max_deviation == round(8.5 / 100.5, 4)
    assert result.flat
    assert result.rec_s == 50  # 500 records over the 10 s between the first and the last busy sample
    summary = result.as_dict(samples=False)
    assert (summary["rss_min_mb"], summary["rss_max_mb"], summary["flat"]) == (98.0, 109.0, True)
    assert "samples" not in summary and len(result.as_dict()["samples"]) == 7


def test_a_growing_daemon_or_one_without_samples_is_not_flat() -> None:
    assert not soak([100.0, 100.0, 110.0, 120.0, 130.0, 140.0]).flat  # 140 is 16.7 % above the median 120
    assert not soak([100.0, 100.0, 100.0], warmup_share=1.0).flat  # nothing after the warm-up
    empty = soak([])
    assert not empty.flat and empty.rec_s == 0.0 and empty.as_dict()["rss_median_mb"] == 0.0
