"""Diversity metrics on tiny embedding sets."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from adrpo.core.metrics import grouped_diversity, mean_pairwise_distance


def test_mean_pairwise_distance_by_hand():
    # (0,0), (3,0), (0,4): distances 3, 4, 5 -> mean 4
    e = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    assert_close(mean_pairwise_distance(e), torch.tensor(4.0))


def test_mean_pairwise_distance_two_points_and_translation():
    # two points: the single distance |(1,2,2)| = 3; translating all points changes nothing
    e = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]])
    assert_close(mean_pairwise_distance(e), torch.tensor(3.0))
    assert_close(mean_pairwise_distance(e + torch.tensor([5.0, -1.0, 0.5])), torch.tensor(3.0))


def test_identical_points_have_zero_diversity():
    e = torch.ones(4, 3)
    assert_close(mean_pairwise_distance(e), torch.tensor(0.0))


def test_grouped_diversity_per_group():
    # group 0: (0,0), (3,0), (0,4) -> 4
    # group 1: (0,0), (1,0), (2,0) -> distances 1, 2, 1 -> 4/3
    e = torch.tensor(
        [[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]
    )
    assert_close(grouped_diversity(e, group_size=3), torch.tensor([4.0, 4.0 / 3.0]))
    # G = 2 pairs consecutive rows: (0,0)-(3,0) = 3, (0,4)-(0,0) = 4, (1,0)-(2,0) = 1
    assert_close(grouped_diversity(e, group_size=2), torch.tensor([3.0, 4.0, 1.0]))


def test_single_sample_raises():
    with pytest.raises(ValueError, match="at least 2"):
        mean_pairwise_distance(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="at least 2"):
        grouped_diversity(torch.zeros(3, 4), group_size=1)
