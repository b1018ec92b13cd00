"""RunningScaler merges batches exactly and never divides by zero; ReplayReservoir is bounded and uniform."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streammoe.model.grouped import last_writes
from streammoe.model.replay import ReplayReservoir
from streammoe.model.scaler import CLIP, MIN_STD, RunningScaler


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=6),
    seed=st.integers(0, 2**31 - 1),
    offset=st.floats(-1e3, 1e3),
)
def test_batches_merge_to_the_statistics_of_one_big_batch(sizes, seed, offset) -> None:
    rng = np.random.default_rng(seed)
    x = (offset + rng.normal(0, 1, (sum(sizes), 3)) * [1.0, 10.0, 0.1]).astype(np.float64)
    merged, whole = RunningScaler(3), RunningScaler(3)
    start = 0
    for n in sizes:
        merged.update(torch.from_numpy(x[start : start + n]))
        start += n
    whole.update(torch.from_numpy(x))
    assert float(merged.count) == len(x)
    if len(x) == 0:
        return
    np.testing.assert_allclose(merged.mean.numpy(), x.mean(0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(merged.m2.numpy(), ((x - x.mean(0)) ** 2).sum(0), rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(merged.mean.numpy(), whole.mean.numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(merged.m2.numpy(), whole.m2.numpy(), rtol=1e-7, atol=1e-7)


def test_standardises_to_zero_mean_unit_variance() -> None:
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal([5.0, -300.0], [2.0, 40.0], (5000, 2)).astype(np.float32))
    s = RunningScaler(2)
    s.update(x[:1234])
    s.update(x[1234:])
    z = s.transform(x).double()
    np.testing.assert_allclose(z.mean(0).numpy(), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std(0, unbiased=False).numpy(), 1.0, atol=1e-4)


def test_constant_channel_gets_a_finite_floor_and_finite_scaled_values() -> None:
    s = RunningScaler(3)
    x = torch.zeros(500, 3)
    x[:, 0] = 250.0  # constant, large
    x[:, 1] = 0.0  # constant at zero
    x[:, 2] = torch.linspace(-1, 1, 500)
    s.update(x)
    std = s.std
    assert float(std[0]) == MIN_STD * 250.0 and float(std[1]) == MIN_STD
    z = s.transform(x)
    assert torch.isfinite(z).all() and torch.all(z[:, :2] == 0)
    moved = s.transform(torch.tensor([[251.0, 1e30, 0.0], [-1e30, 0.005, 0.0]]))
    assert torch.isfinite(moved).all()
    assert abs(float(moved[0, 0]) - 1.0 / (MIN_STD * 250.0)) < 1e-4  # one unit off a constant 250: 0.4
    assert float(moved[0, 1]) == CLIP and float(moved[1, 0]) == -CLIP
    assert abs(float(moved[1, 1]) - 0.5) < 1e-5


def test_reservoir_never_holds_more_than_size_and_keeps_each_mode_apart() -> None:
    res = ReplayReservoir(4, 2, size=50)
    g = torch.Generator().manual_seed(0)
    for i in range(30):
        modes = torch.randint(0, 3, (37,), generator=g)  # slot 3 never gets a record
        x = torch.stack([modes.float(), torch.arange(37.0) + 37 * i], 1)
        res.add(modes, x, g)
    for k in range(3):
        kept = res.from_mode(k)
        assert kept.shape[0] == 50 and int(res.seen[k]) > 50
        assert torch.all(kept[:, 0] == k), "a record lands only in its own mode's reservoir"
        assert len(torch.unique(kept[:, 1])) == 50, "no record is kept twice"
    assert res.from_mode(3).shape[0] == 0


def test_reservoir_is_a_uniform_sample_of_the_mode_history() -> None:
    size, n, trials = 100, 2000, 60
    early = []
    for t in range(trials):
        res = ReplayReservoir(1, 1, size=size)
        g = torch.Generator().manual_seed(t)
        for start in range(0, n, 128):
            stop = min(n, start + 128)
            res.add(
                torch.zeros(stop - start, dtype=torch.long), torch.arange(start, stop, dtype=torch.float32)[:, None], g
            )
        early.append(float((res.from_mode(0)[:, 0] < n / 2).float().mean()))
    # Each kept record is from the first half with probability 1/2 (about; sd of the mean ~ 0.5/sqrt(6000)).
    assert abs(np.mean(early) - 0.5) < 0.03, np.mean(early)


def test_of_writes_to_one_slot_in_a_batch_only_the_last_is_made() -> None:
    """Algorithm R record by record: a later record replaces an earlier one in the same slot. A GPU's indexed
    write keeps an arbitrary one of repeated slots, so the reservoir picks the last writes itself."""
    slot = torch.tensor([1, 2, 1, 3, 2, 1, 0])
    assert last_writes(slot, 4).tolist() == [False, False, False, True, True, True, True]
    res = ReplayReservoir(1, 1, size=4)
    want = torch.zeros(4)
    g = torch.Generator().manual_seed(3)
    for start in range(0, 4000, 500):  # batches with many repeated slots; each record is its own position
        twin = torch.Generator().set_state(g.get_state())  # the draws add() is about to make
        seq = torch.arange(start, start + 500)
        slot = torch.where(seq < 4, seq, (torch.rand(500, generator=twin) * (seq + 1).float()).long())
        for i, j in zip(seq.tolist(), slot.tolist()):  # algorithm R, one record at a time
            if j < 4:
                want[j] = float(i)
        res.add(torch.zeros(500, dtype=torch.long), seq.float()[:, None], g)
        assert torch.equal(res.from_mode(0)[:, 0], want)


def test_sample_returns_only_active_experts_that_have_records_and_spreads_evenly() -> None:
    res = ReplayReservoir(5, 2, size=20)
    g = torch.Generator().manual_seed(1)
    for k in (0, 1, 3):
        res.add(torch.full((30,), k), torch.full((30, 2), float(k)), g)
    active = torch.tensor([True, False, True, True, True])  # 1 inactive; 2 and 4 active but empty
    x, ids = res.sample(active, 64, g)
    assert set(ids.tolist()) == {0, 3}
    assert (ids == 0).sum() == (ids == 3).sum() == 32
    assert torch.all(x[:, 0] == ids.float()), "each sampled record comes from its id's reservoir"
    x, ids = res.sample(torch.tensor([False, True, False, False, False]), 64, g)
    assert torch.all(ids == 1) and ids.numel() == 64
    x, ids = res.sample(torch.tensor([False, False, True, False, True]), 64, g)
    assert x.shape == (0, 2) and ids.numel() == 0
    res.reset_mode(3)
    _, ids = res.sample(active, 10, g)
    assert set(ids.tolist()) == {0}
