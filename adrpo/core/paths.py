"""The straight (rectified / OT) probability path and its conversion to diffusers' convention.

adrpo's convention, used everywhere in the package:
    t = 0 is noise x0 ~ N(0, I), t = 1 is data x1;
    x_t = (1 − t)·x0 + t·x1;   u_t = dx_t/dt = x1 − x0.

diffusers' flow-matching models (SD3, FLUX) use sigma = 1 − t (sigma = 1 is noise),
x_sigma = sigma·noise + (1 − sigma)·data, and predict ``noise − data`` = −u_t. SD3 is called
with ``timestep = 1000·sigma``, FLUX with ``timestep = sigma``.
"""

from __future__ import annotations

import torch


def _expand(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) -> (N, 1, ..., 1) broadcastable against ``like`` of shape (N, *D)."""
    return t.reshape(-1, *([1] * (like.dim() - 1)))


class StraightPath:
    """x_t = (1 − t)·x0 + t·x1 with constant velocity u_t = x1 − x0 (no sigma_min)."""

    def interpolate(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t (N, *D) from noise x0 (N, *D), data x1 (N, *D) and times t (N,)."""
        t = _expand(t, x0)
        return (1 - t) * x0 + t * x1

    def target_velocity(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """u_t (N, *D); independent of t on this path."""
        del t
        return x1 - x0

    def sample(
        self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, u_t), both (N, *D)."""
        return self.interpolate(x0, x1, t), self.target_velocity(x0, x1, t)


def t_to_sigma(t: torch.Tensor) -> torch.Tensor:
    """adrpo time t (data at 1) to diffusers' sigma (noise at 1)."""
    return 1 - t


def sigma_to_t(sigma: torch.Tensor) -> torch.Tensor:
    """diffusers' sigma (noise at 1) to adrpo time t (data at 1)."""
    return 1 - sigma


def velocity_from_diffusers(prediction: torch.Tensor) -> torch.Tensor:
    """diffusers' flow prediction (noise − data) to adrpo's velocity u_t = data − noise."""
    return -prediction


def shifted_time_grid(num_steps: int, *, shift: float = 1.0) -> torch.Tensor:
    """(num_steps + 1,) increasing times from 0 (noise) to 1 (data) for an Euler sampler.

    ``shift`` > 1 spends more steps near noise, as SD3's scheduler does with
    sigma' = shift·sigma / (1 + (shift − 1)·sigma); shift = 1 is a uniform grid.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    sigma = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    sigma = shift * sigma / (1 + (shift - 1) * sigma)
    return (1 - sigma).float()
