"""ModeCalibration: p-values are calibrated per mode, monotone, keep falling in the tail, and fall back sanely."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streammoe.model.calibration import MIN_MODE_SCORES, TAIL_FRACTION, ModeCalibration


def modes(n: int, k: int = 0) -> torch.Tensor:
    return torch.full((n,), k, dtype=torch.long)


def gamma_scores(n: int, seed: int, shape: float = 3.0, scale: float = 2.0, shift: float = 5.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # A skewed null, like NLLs: Gamma via the sum of `shape` exponentials (integer shape).
    e = -torch.log(torch.rand((n, int(shape)), generator=g)).sum(1)
    return shift + scale * e


def test_p_values_of_fresh_draws_are_uniform_in_each_mode() -> None:
    cal = ModeCalibration(3, 2048)
    # Two modes with very different score scales, fed interleaved in batches, as the detector does.
    for i in range(4):
        cal.update(
            torch.cat([modes(600, 0), modes(600, 2)]),
            torch.cat([gamma_scores(600, i), 200 + 0.1 * gamma_scores(600, 10 + i)]),
        )
    for k, fresh in ((0, gamma_scores(20_000, 99)), (2, 200 + 0.1 * gamma_scores(20_000, 98))):
        p = cal.log_p_value(modes(20_000, k), fresh).exp()
        for level, lo, hi in ((0.05, 0.03, 0.07), (0.2, 0.17, 0.23), (0.5, 0.47, 0.53), (0.01, 0.004, 0.02)):
            frac = float((p < level).float().mean())
            assert lo <= frac <= hi, (k, level, frac)
    # Each mode is judged against its own null: mode 2's typical score is extreme for mode 0 and vice versa.
    assert cal.log_p_value(modes(1, 0), torch.tensor([201.0])).item() < math.log(1e-6)
    assert cal.log_p_value(modes(1, 2), torch.tensor([15.0])).item() == 0.0


def test_inside_the_buffer_p_is_the_empirical_upper_tail_frequency() -> None:
    ref = gamma_scores(700, 3)
    cal = ModeCalibration(1, 1024)
    cal.update(modes(700), ref)
    srt = np.sort(ref.numpy())
    q_start = srt[math.floor(700 * (1 - TAIL_FRACTION))]
    probe = torch.linspace(float(srt[0]) - 1, float(q_start), 300)
    got = cal.log_p_value(modes(300), probe).numpy()
    n_at_or_above = (srt[None, :] >= probe.numpy()[:, None]).sum(1)
    np.testing.assert_allclose(got, np.log((n_at_or_above + 1) / 701), rtol=1e-5, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.floats(-50, 50, width=32), min_size=1, max_size=300),
    probes=st.lists(st.floats(-100, 1e4, width=32), min_size=2, max_size=60),
)
def test_p_value_is_a_non_increasing_function_of_the_score(values, probes) -> None:
    cal = ModeCalibration(2, 256)
    cal.update(modes(len(values)), torch.tensor(values))
    grid = torch.tensor(sorted(probes))
    lp = cal.log_p_value(modes(len(grid)), grid)
    assert torch.all(lp <= 0)
    assert torch.all(lp[1:] <= lp[:-1] + 1e-6), (lp,)


def test_past_the_largest_reference_the_p_value_keeps_falling_without_underflow() -> None:
    cal = ModeCalibration(1, 2048)
    ref = gamma_scores(2048, 5)
    cal.update(modes(2048), ref)
    top = float(ref.max())
    beyond = top + torch.tensor([0.0, 1.0, 2.0, 5.0, 20.0, 100.0, 1e4])
    lp = cal.log_p_value(modes(len(beyond)), beyond)
    assert torch.all(lp[1:] < lp[:-1]), lp
    assert lp[-2] < math.log(1.0 / 2049), "the tail goes below what an empirical count could express"
    assert torch.isfinite(lp).all(), "far tails stay ordered in log space instead of becoming p = 0"


def test_score_at_inverts_log_p_value_in_the_tail() -> None:
    cal = ModeCalibration(3, 1024)
    cal.update(
        torch.cat([modes(1024, 0), modes(900, 1)]), torch.cat([gamma_scores(1024, 7), 40 + 3 * gamma_scores(900, 8)])
    )
    for k in (0, 1, 2):  # mode 2 has no scores: pooled
        for log_p in (math.log(0.049), math.log(1e-2), math.log(1e-3), math.log(1e-9), -200.0):
            s = cal.score_at(modes(1, k), log_p)
            assert abs(cal.log_p_value(modes(1, k), s).item() - log_p) < 1e-3 * max(1.0, abs(log_p)), (k, log_p)


def test_young_mode_is_judged_against_the_pooled_buffer_until_it_has_min_mode_scores() -> None:
    cal = ModeCalibration(3, 2048)
    pooled_ref = ModeCalibration(1, 2048)  # what the pool should hold, built independently
    common = gamma_scores(1600, 11)
    young = torch.full((MIN_MODE_SCORES - 1,), 100.0)
    cal.update(modes(1600, 0), common)
    cal.update(modes(len(young), 1), young)
    pooled_ref.update(modes(1600 + len(young)), torch.cat([common, young]))
    probe = torch.linspace(0, 120, 50)
    assert torch.equal(cal.rows_for(torch.tensor([0, 1, 2])), torch.tensor([0, 3, 3]))
    torch.testing.assert_close(cal.log_p_value(modes(50, 1), probe), pooled_ref.log_p_value(modes(50), probe))
    # Against its own scores (all 100) a score of 60 would be ordinary; against the pool it is in the tail.
    assert cal.log_p_value(modes(1, 1), torch.tensor([60.0])).item() < math.log(TAIL_FRACTION)
    cal.update(modes(1, 1), torch.tensor([100.0]))  # now exactly MIN_MODE_SCORES
    assert cal.rows_for(modes(1, 1)).item() == 1
    assert cal.log_p_value(modes(1, 1), torch.tensor([60.0])).item() == 0.0


def test_uncalibrated_model_gives_p_one_and_nan_scores_give_p_zero() -> None:
    cal = ModeCalibration(2, 64)
    assert torch.all(cal.log_p_value(torch.tensor([0, 1, 1]), torch.tensor([0.0, 1e9, -5.0])) == 0.0)
    cal.update(modes(100, 0), gamma_scores(100, 1))
    lp = cal.log_p_value(torch.tensor([0, 1]), torch.tensor([math.nan, math.nan]))
    assert torch.all(lp == -math.inf)


def test_ring_buffer_forgets_all_but_the_last_size_scores() -> None:
    cal = ModeCalibration(1, 128)
    cal.update(modes(128), torch.zeros(128))
    for _ in range(3):
        cal.update(modes(50), torch.full((50,), 10.0))
    # 150 scores of 10 came after the zeros: the buffer of 128 holds only tens now, so 5 is below everything.
    assert cal.log_p_value(modes(1), torch.tensor([5.0])).item() == 0.0
    cal.update(modes(500), torch.cat([torch.full((372,), -1.0), torch.full((128,), 20.0)]))  # one batch > size
    assert cal.log_p_value(modes(1), torch.tensor([15.0])).item() == 0.0
    assert int(cal.n_reference()[0]) == 128


def test_one_update_fills_every_mode_and_the_pool_in_order_and_each_overwrites_its_oldest() -> None:
    """All rows are written in one pass: each row must still receive its own records in arrival order, keep only
    its last `size`, and be overwritten oldest first by the next update."""
    cal = ModeCalibration(2, 4)
    cal.update(torch.tensor([0, 1, 0, 0, 1, 0, 0, 0]), torch.arange(8.0))
    held = [sorted(cal.scores[row, : int(cal.n_reference()[row])].tolist()) for row in range(3)]
    assert held == [[3.0, 5.0, 6.0, 7.0], [1.0, 4.0], [4.0, 5.0, 6.0, 7.0]]
    cal.update(torch.tensor([0, 1]), torch.tensor([8.0, 9.0]))
    held = [sorted(cal.scores[row, : int(cal.n_reference()[row])].tolist()) for row in range(3)]
    assert held == [[5.0, 6.0, 7.0, 8.0], [1.0, 4.0, 9.0], [6.0, 7.0, 8.0, 9.0]]


def test_reset_mode_hands_the_mode_back_to_the_pool() -> None:
    cal = ModeCalibration(2, 1024)
    cal.update(modes(800, 0), torch.linspace(0, 1, 800))
    cal.update(modes(200, 1), torch.linspace(50, 51, 200))
    before = cal.log_p_value(modes(1, 1), torch.tensor([49.0])).item()
    cal.reset_mode(1)
    after = cal.log_p_value(modes(1, 1), torch.tensor([49.0])).item()
    assert before == 0.0
    assert abs(after - math.log(201 / 1001)) < 1e-5, "the pool's empirical frequency: 200 of 1000 scores lie above"


def test_numpy_sort_of_the_buffers_gives_the_torch_sort_s_p_values_and_thresholds_bit_for_bit(monkeypatch) -> None:
    """`sorted_rows` sorts the buffers with numpy on the CPU (torch's sort took ~20x as long): over random
    updates with ties, censored (-inf) entries, zeros of either sign, a re-measured tail and a reset mode, every
    p-value and every threshold equals what torch's sort gives, bit for bit."""
    from streammoe.model import calibration

    g = torch.Generator().manual_seed(7)
    k_max = 6
    fast, old = ModeCalibration(k_max, 256), ModeCalibration(k_max, 256)
    probes = torch.cat([torch.randn(400, generator=g) * 4, torch.tensor([0.0, -0.0, -math.inf, math.inf, math.nan])])
    probe_modes = torch.randint(0, k_max, (probes.numel(),), generator=g)
    for step in range(60):
        n = int(torch.randint(1, 300, (1,), generator=g))
        rows = torch.randint(0, k_max, (n,), generator=g)
        scores = (torch.randn(n, generator=g) * 3).round(decimals=1)  # ties
        scores[torch.rand(n, generator=g) < 0.2] = -math.inf  # cleared by the cascade: censored
        scores[torch.rand(n, generator=g) < 0.05] = -0.0
        for cal in (fast, old):
            cal.update(rows, scores)
            if step == 20:
                cal.pin()
            if step == 30:
                cal.replace(1, torch.arange(5), torch.full((5,), 2.5))
            if step == 40:
                cal.reset_mode(2)
        got = (fast.log_p_value(probe_modes, probes), fast.score_at(torch.arange(k_max), math.log(0.05)))
        with monkeypatch.context() as m:
            m.setattr(calibration, "sorted_rows", lambda x: x.sort(dim=1).values)
            want = (old.log_p_value(probe_modes, probes), old.score_at(torch.arange(k_max), math.log(0.05)))
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a.view(torch.int32), b.view(torch.int32)), step
    assert torch.isfinite(got[1]).all() and (got[0] < 0).any()
