"""compute_advantages / clip_advantages on hand-sized reward vectors."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from adrpo.core.advantages import clip_advantages, compute_advantages


def test_group_baseline_std_scaled_by_hand():
    # G = 3, two prompts.
    # group 0: [1, 2, 3], mean 2, deviations [-1, 0, 1], population var 2/3
    #          -> [-1, 0, 1] / sqrt(2/3) = [-1.2247, 0, 1.2247]
    # group 1: [4, 4, 10], mean 6, deviations [-2, -2, 4], population var (4+4+16)/3 = 8,
    #          std 2·sqrt(2) -> [-1/sqrt(2), -1/sqrt(2), sqrt(2)]
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 4.0, 10.0])
    s = math.sqrt(2.0 / 3.0)
    expected = torch.tensor([-1 / s, 0.0, 1 / s, -1 / math.sqrt(2), -1 / math.sqrt(2), math.sqrt(2)])
    assert_close(compute_advantages(rewards, group_size=3), expected)


def test_docstring_example():
    # group [1, 3]: mean 2, std 1 -> [-1, 1]; group [5, 5]: all equal -> [0, 0]
    out = compute_advantages(torch.tensor([1.0, 3.0, 5.0, 5.0]), group_size=2)
    assert_close(out, torch.tensor([-1.0, 1.0, 0.0, 0.0]))


def test_batch_baseline_by_hand():
    # batch [1, 2, 3, 6]: mean 3, deviations [-2, -1, 0, 3], population var (4+1+0+9)/4 = 3.5
    rewards = torch.tensor([1.0, 2.0, 3.0, 6.0])
    expected = torch.tensor([-2.0, -1.0, 0.0, 3.0]) / math.sqrt(3.5)
    assert_close(compute_advantages(rewards, group_size=2, baseline="batch"), expected)
    # the same rewards with the group rule: [1, 2] -> [-1, 1], [3, 6] -> [-1, 1]
    assert_close(
        compute_advantages(rewards, group_size=2, baseline="group"),
        torch.tensor([-1.0, 1.0, -1.0, 1.0]),
    )


def test_batch_baseline_does_not_depend_on_group_size():
    rewards = torch.tensor([0.5, -1.0, 2.0, 4.0, 0.0, 1.5])
    a2 = compute_advantages(rewards, group_size=2, baseline="batch")
    a3 = compute_advantages(rewards, group_size=3, baseline="batch")
    assert_close(a2, a3)
    # mean 0 and population std 1 over the batch
    assert_close(a2.mean(), torch.tensor(0.0), atol=1e-6, rtol=0)
    assert_close(a2.std(correction=0), torch.tensor(1.0))


def test_std_is_population_std():
    # [0, 2]: population std 1 -> [-1, 1]; the sample std sqrt(2) would give ±0.7071
    out = compute_advantages(torch.tensor([0.0, 2.0]), group_size=2)
    assert_close(out, torch.tensor([-1.0, 1.0]))


@pytest.mark.parametrize("value", [5.0, 0.1, 0.3, 7.77, -2.5])
@pytest.mark.parametrize("g", [3, 6, 7])
def test_equal_group_gives_exact_zero(value, g):
    # A group whose rewards are all equal is degenerate: exactly 0, never NaN, while the
    # other group in the batch is still normalised ([1, 2, ..., G] -> mean (G+1)/2).
    # 0.1·7, 0.3·6, 7.77·5 in float32 leave a rounding residue in the mean (std ~1e-8..1e-7),
    # which must fall under eps.
    other = torch.arange(1, g + 1, dtype=torch.float32)
    rewards = torch.cat([torch.full((g,), value), other])
    out = compute_advantages(rewards, group_size=g)
    assert torch.equal(out[:g], torch.zeros(g))
    assert torch.isfinite(out).all()
    expected_other = (other - other.mean()) / other.std(correction=0)
    assert_close(out[g:], expected_other)


def test_all_equal_batch_baseline_is_zero():
    rewards = torch.full((6,), 0.1)
    out = compute_advantages(rewards, group_size=3, baseline="batch")
    assert torch.equal(out, torch.zeros(6))


@pytest.mark.parametrize("value, g", [(1000.1, 3), (123.456, 5), (10000.1, 6)])
def test_equal_large_rewards_give_exact_zero(value, g):
    out = compute_advantages(torch.full((g,), value), group_size=g)
    assert torch.equal(out, torch.zeros(g))


def test_equal_group_scale_none_gives_exact_zero():
    out = compute_advantages(torch.full((7,), 0.1), group_size=7, scale="none")
    assert torch.equal(out, torch.zeros(7))


def test_scale_none_keeps_units():
    # group [10, 20, 30] - 20 = [-10, 0, 10]; group [1, 1, 4] - 2 = [-1, -1, 2]
    rewards = torch.tensor([10.0, 20.0, 30.0, 1.0, 1.0, 4.0])
    out = compute_advantages(rewards, group_size=3, scale="none")
    assert_close(out, torch.tensor([-10.0, 0.0, 10.0, -1.0, -1.0, 2.0]))
    # units: scaling rewards by 100 scales these advantages by 100, the std ones not at all
    assert_close(compute_advantages(100 * rewards, group_size=3, scale="none"), 100 * out)
    assert_close(
        compute_advantages(100 * rewards, group_size=3),
        compute_advantages(rewards, group_size=3),
    )


def test_shift_invariance_and_dtype_preserved():
    rewards = torch.tensor([0.25, -1.0, 3.0, 2.0], dtype=torch.float64)
    out = compute_advantages(rewards, group_size=2)
    assert out.dtype == torch.float64
    assert_close(compute_advantages(rewards + 7.0, group_size=2), out)
    assert_close(out, torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64))


@pytest.mark.parametrize("group_size", [4, 0, -2, 5])
def test_bad_group_size_raises(group_size):
    with pytest.raises(ValueError, match="group_size"):
        compute_advantages(torch.zeros(6), group_size=group_size)


def test_bad_baseline_raises():
    with pytest.raises(ValueError, match="baseline"):
        compute_advantages(torch.zeros(4), group_size=2, baseline="prompt")


def test_bad_scale_raises():
    with pytest.raises(ValueError, match="scale"):
        compute_advantages(torch.zeros(4), group_size=2, scale="rank")


@pytest.mark.parametrize("shape", [(3, 2), (6, 1), ()])
def test_non_1d_rewards_raise(shape):
    with pytest.raises(ValueError, match="1-D"):
        compute_advantages(torch.zeros(shape), group_size=1)


def test_clip_advantages_values():
    a = torch.tensor([-3.0, -0.5, 0.0, 0.5, 3.0])
    assert_close(clip_advantages(a, a_min=-1.0, a_max=1.0), torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))
    # asymmetric range
    assert_close(clip_advantages(a, a_min=-0.25, a_max=2.0), torch.tensor([-0.25, -0.25, 0.0, 0.5, 2.0]))
    # a_min == a_max is allowed and collapses everything to that value
    assert_close(clip_advantages(a, a_min=0.2, a_max=0.2), torch.full((5,), 0.2))


def test_clip_advantages_bad_range_raises():
    with pytest.raises(ValueError, match="a_min"):
        clip_advantages(torch.zeros(3), a_min=1.0, a_max=-1.0)
