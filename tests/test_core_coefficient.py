"""adaptive_coefficient: β0 − clip(A, a_min, a_max) and its diagnostics."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from adrpo.core.coefficient import adaptive_coefficient


def test_values_and_diagnostics():
    # β0 = 1, clip to [-1, 1]: A = [-2, -0.5, 0, 0.5, 3] -> clipped [-1, -0.5, 0, 0.5, 1]
    # coefficient 1 − clipped = [2, 1.5, 1, 0.5, 0]; mean 5/5 = 1, min 0, max 2
    # clipped samples: -2 and 3 -> 2/5; coefficient 0 is not negative -> 0
    a = torch.tensor([-2.0, -0.5, 0.0, 0.5, 3.0])
    coef, clipped, diag = adaptive_coefficient(a, beta0=1.0, a_min=-1.0, a_max=1.0)
    assert_close(clipped, torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))
    assert_close(coef, torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0]))
    assert_close(diag["coef_mean"], torch.tensor(1.0))
    assert_close(diag["coef_min"], torch.tensor(0.0))
    assert_close(diag["coef_max"], torch.tensor(2.0))
    assert_close(diag["frac_clipped"], torch.tensor(0.4))
    assert_close(diag["frac_negative"], torch.tensor(0.0))


def test_frac_negative_when_a_max_exceeds_beta0():
    # β0 = 0.5, clip to [-1, 2]: A = [-3, 0, 1, 2.5] -> clipped [-1, 0, 1, 2]
    # coefficient [1.5, 0.5, -0.5, -1.5]: two negative -> 0.5; two clipped -> 0.5
    # mean (1.5 + 0.5 − 0.5 − 1.5)/4 = 0
    a = torch.tensor([-3.0, 0.0, 1.0, 2.5])
    coef, clipped, diag = adaptive_coefficient(a, beta0=0.5, a_min=-1.0, a_max=2.0)
    assert_close(clipped, torch.tensor([-1.0, 0.0, 1.0, 2.0]))
    assert_close(coef, torch.tensor([1.5, 0.5, -0.5, -1.5]))
    assert_close(diag["frac_negative"], torch.tensor(0.5))
    assert_close(diag["frac_clipped"], torch.tensor(0.5))
    assert_close(diag["coef_mean"], torch.tensor(0.0))
    assert_close(diag["coef_min"], torch.tensor(-1.5))
    assert_close(diag["coef_max"], torch.tensor(1.5))


def test_zero_clip_range_gives_fixed_beta():
    # a_min = a_max = 0 clips every advantage to 0, so the coefficient is the fixed β0
    a = torch.tensor([-4.0, 0.3, 2.0])
    coef, clipped, diag = adaptive_coefficient(a, beta0=0.7, a_min=0.0, a_max=0.0)
    assert_close(coef, torch.full((3,), 0.7))
    assert_close(clipped, torch.zeros(3))
    assert_close(diag["frac_clipped"], torch.tensor(1.0))


def test_diagnostics_are_detached():
    a = torch.tensor([-2.0, 0.5, 3.0], requires_grad=True)
    _, _, diag = adaptive_coefficient(a, beta0=1.0, a_min=-1.0, a_max=1.0)
    assert all(not v.requires_grad for v in diag.values())
    assert all(v.dim() == 0 for v in diag.values())


def test_bad_range_raises():
    with pytest.raises(ValueError, match="a_min"):
        adaptive_coefficient(torch.zeros(3), beta0=1.0, a_min=0.5, a_max=-0.5)


def test_column_shape():
    # (B, 1): A = [[-2], [0.5], [3]], β0 = 1, clip ±1 -> coefficient [[2], [0.5], [0]]
    a = torch.tensor([[-2.0], [0.5], [3.0]])
    coef, clipped, diag = adaptive_coefficient(a, beta0=1.0, a_min=-1.0, a_max=1.0)
    assert coef.shape == (3, 1) and clipped.shape == (3, 1)
    assert_close(coef, torch.tensor([[2.0], [0.5], [0.0]]))
    assert_close(clipped, torch.tensor([[-1.0], [0.5], [1.0]]))
    # mean (2 + 0.5 + 0)/3 = 5/6; two of three clipped
    assert_close(diag["coef_mean"], torch.tensor(5.0 / 6.0))
    assert_close(diag["frac_clipped"], torch.tensor(2.0 / 3.0))
