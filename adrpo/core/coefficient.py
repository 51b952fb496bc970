"""The adaptive divergence coefficient β_tot = β0 − A (paper Eq. 5–7)."""

from __future__ import annotations

import torch


def adaptive_coefficient(
    advantages: torch.Tensor, *, beta0: float, a_min: float, a_max: float
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Per-sample divergence coefficient β0 − clip(A, a_min, a_max).

    Good samples (A > 0) get a looser leash, poor samples (A < 0) a tighter one. When
    a_max > β0 the coefficient of the best samples turns negative, i.e. they are pushed
    *away* from the reference; the diagnostics count how often.

    Args:
        advantages: (N,) or (B, 1) raw advantages.
        beta0: the base coefficient β0.
        a_min: lower end A_min of the advantage's clip range in the coefficient.
        a_max: upper end A_max of the clip range.

    Returns:
        coefficient: same shape as ``advantages``, β0 − A_clipped.
        clipped: the clipped advantages, same shape.
        diagnostics: detached scalars ``coef_mean``, ``coef_min``, ``coef_max``,
            ``frac_clipped`` (share of samples outside [a_min, a_max]) and
            ``frac_negative`` (share whose coefficient is below 0).

    >>> coef, a, d = adaptive_coefficient(torch.tensor([-2., 0.5, 3.]), beta0=1., a_min=-1., a_max=1.)
    >>> coef
    tensor([2.0000, 0.5000, 0.0000])
    """
    if a_min > a_max:
        raise ValueError(f"a_min ({a_min}) must not exceed a_max ({a_max})")
    clipped = advantages.clamp(min=a_min, max=a_max)
    coefficient = beta0 - clipped
    with torch.no_grad():
        diagnostics = {
            "coef_mean": coefficient.mean(),
            "coef_min": coefficient.min(),
            "coef_max": coefficient.max(),
            "frac_clipped": (clipped != advantages).float().mean(),
            "frac_negative": (coefficient < 0).float().mean(),
        }
    return coefficient, clipped, diagnostics
