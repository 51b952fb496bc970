"""StraightPath, the diffusers time/velocity conversions and the shifted Euler grid."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from adrpo.core.paths import (
    StraightPath,
    shifted_time_grid,
    sigma_to_t,
    t_to_sigma,
    velocity_from_diffusers,
)


def test_interpolate_by_hand_nd():
    # x0 = [1, -2], x1 = [3, 2], t = 0.25: 0.75·[1, -2] + 0.25·[3, 2] = [1.5, -1.0]; u = [2, 4]
    path = StraightPath()
    x0 = torch.tensor([[1.0, -2.0]])
    x1 = torch.tensor([[3.0, 2.0]])
    xt, ut = path.sample(x0, x1, torch.tensor([0.25]))
    assert_close(xt, torch.tensor([[1.5, -1.0]]))
    assert_close(ut, torch.tensor([[2.0, 4.0]]))


def test_closed_form_nd():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    t = torch.tensor([0.0, 0.3, 0.8, 1.0])
    xt, ut = StraightPath().sample(x0, x1, t)
    assert_close(xt, (1 - t)[:, None] * x0 + t[:, None] * x1)
    assert_close(ut, x1 - x0)


def test_closed_form_image_shaped_with_per_sample_t():
    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(3, 2, 2, 2, generator=g), torch.randn(3, 2, 2, 2, generator=g)
    t = torch.tensor([0.1, 0.5, 0.9])
    path = StraightPath()
    xt = path.interpolate(x0, x1, t)
    tt = t.view(3, 1, 1, 1)
    assert_close(xt, (1 - tt) * x0 + tt * x1)
    # sample n uses its own t: compare one sample with a scalar recomputation
    assert_close(xt[1], 0.5 * x0[1] + 0.5 * x1[1])
    assert_close(path.target_velocity(x0, x1, t), x1 - x0)


def test_endpoints():
    g = torch.Generator().manual_seed(2)
    x0, x1 = torch.randn(3, 1, 2, 2, generator=g), torch.randn(3, 1, 2, 2, generator=g)
    path = StraightPath()
    assert_close(path.interpolate(x0, x1, torch.zeros(3)), x0, rtol=0, atol=0)
    assert_close(path.interpolate(x0, x1, torch.ones(3)), x1, rtol=0, atol=0)


def test_finite_difference_equals_velocity():
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(3, 4, generator=g, dtype=torch.float64)
    x1 = torch.randn(3, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0.2, 0.5, 0.7], dtype=torch.float64)
    h = 1e-4
    path = StraightPath()
    fd = (path.interpolate(x0, x1, t + h) - path.interpolate(x0, x1, t - h)) / (2 * h)
    assert_close(fd, path.target_velocity(x0, x1, t), rtol=1e-7, atol=1e-7)


def test_sigma_round_trip():
    # sigma = 1 − t: [0, 0.25, 1] -> [1, 0.75, 0]
    t = torch.tensor([0.0, 0.25, 1.0])
    assert_close(t_to_sigma(t), torch.tensor([1.0, 0.75, 0.0]))
    assert_close(sigma_to_t(t_to_sigma(t)), t)
    sigma = torch.tensor([0.9, 0.4, 0.05])
    assert_close(t_to_sigma(sigma_to_t(sigma)), sigma)


def test_diffusers_convention_matches_path():
    # diffusers: x_sigma = sigma·noise + (1 − sigma)·data, the model predicts noise − data.
    g = torch.Generator().manual_seed(4)
    noise, data = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    sigma = torch.tensor([1.0, 0.6, 0.1])
    x_sigma = sigma[:, None] * noise + (1 - sigma[:, None]) * data
    path = StraightPath()
    assert_close(path.interpolate(noise, data, sigma_to_t(sigma)), x_sigma)
    diffusers_prediction = noise - data
    assert_close(velocity_from_diffusers(diffusers_prediction), path.target_velocity(noise, data, sigma))
    # hand values: noise 1, data 3 -> prediction -2 -> velocity +2 (towards the data)
    assert_close(velocity_from_diffusers(torch.tensor([1.0 - 3.0])), torch.tensor([2.0]))


def test_grid_shift_one_is_uniform():
    assert_close(shifted_time_grid(4), torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    assert_close(shifted_time_grid(7, shift=1.0), torch.linspace(0.0, 1.0, 8))


def test_grid_shift_three_by_hand():
    # sigma = [1, 0.75, 0.5, 0.25, 0], sigma' = 3σ / (1 + 2σ):
    #   1 -> 3/3 = 1;  0.75 -> 2.25/2.5 = 0.9;  0.5 -> 1.5/2 = 0.75;  0.25 -> 0.75/1.5 = 0.5;  0 -> 0
    # t = 1 − sigma' = [0, 0.1, 0.25, 0.5, 1]
    grid = shifted_time_grid(4, shift=3.0)
    assert grid.dtype == torch.float32
    assert_close(grid, torch.tensor([0.0, 0.1, 0.25, 0.5, 1.0]))


def test_grid_shift_three_matches_formula():
    n = 10
    sigma = torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64)
    expected = 1 - 3 * sigma / (1 + 2 * sigma)
    assert_close(shifted_time_grid(n, shift=3.0), expected.float())


@pytest.mark.parametrize("shift", [0.5, 1.0, 3.0, 10.0])
@pytest.mark.parametrize("n", [1, 5, 28])
def test_grid_monotone_with_endpoints(shift, n):
    grid = shifted_time_grid(n, shift=shift)
    assert grid.shape == (n + 1,)
    assert grid[0].item() == 0.0 and grid[-1].item() == 1.0
    assert (grid.diff() > 0).all()


def test_grid_shift_above_one_spends_steps_near_noise():
    # every interior time lies below the uniform one, so the first step is shorter
    uniform, shifted = shifted_time_grid(8), shifted_time_grid(8, shift=3.0)
    assert (shifted[1:-1] < uniform[1:-1]).all()
    assert shifted[1] - shifted[0] < uniform[1] - uniform[0]


@pytest.mark.parametrize("num_steps", [0, -3])
def test_grid_bad_num_steps(num_steps):
    with pytest.raises(ValueError, match="num_steps"):
        shifted_time_grid(num_steps)


@pytest.mark.parametrize("shift", [0.0, -1.0])
def test_grid_bad_shift(shift):
    with pytest.raises(ValueError, match="shift"):
        shifted_time_grid(4, shift=shift)
