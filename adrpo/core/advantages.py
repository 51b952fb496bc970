"""Advantages: reward minus a baseline, optionally scaled, then clipped.

Samples are laid out prompt-major: the N = B·G rewards of a batch hold the G samples of
prompt 0 first, then the G samples of prompt 1, and so on. This is the layout TRL uses and
the one ``adrpo.flow`` produces.
"""

from __future__ import annotations

import torch

BASELINES = ("group", "batch")
SCALINGS = ("std", "none")


def compute_advantages(
    rewards: torch.Tensor,
    *,
    group_size: int,
    baseline: str = "group",
    scale: str = "std",
    eps: float = 1e-6,
) -> torch.Tensor:
    """Reward minus a baseline, optionally divided by the standard deviation.

    A_i = (r_i − mean_S r) / std_S r, where S is the prompt's group of G samples
    (``baseline="group"``, GRPO's rule) or the whole batch (``baseline="batch"``), and the
    std is the population std over the same set. With ``scale="none"`` the division is
    skipped and A keeps the reward's units. A set whose rewards are all equal, or (with
    ``scale="std"``) whose std is at most ``eps``·max(1, |mean|), gets advantage exactly 0,
    never NaN or a rounding error blown up to ±1.

    Args:
        rewards: (N,) rewards, N = B·G, prompt-major.
        group_size: G, the number of samples per prompt; must divide N.
        baseline: "group" or "batch".
        scale: "std" or "none".
        eps: relative tolerance below which a standard deviation counts as zero.

    Returns:
        (N,) advantages, same dtype as ``rewards``.

    >>> compute_advantages(torch.tensor([1., 3., 5., 5.]), group_size=2)
    tensor([-1.,  1.,  0.,  0.])
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (N,), got shape {tuple(rewards.shape)}")
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    if scale not in SCALINGS:
        raise ValueError(f"scale must be one of {SCALINGS}, got {scale!r}")
    n = rewards.numel()
    if group_size < 1 or n % group_size:
        raise ValueError(f"group_size={group_size} must be >= 1 and divide the {n} rewards")
    sets = rewards.view(-1, group_size) if baseline == "group" else rewards.view(1, n)  # (B, G) or (1, N)
    mean = sets.mean(dim=1, keepdim=True)
    centered = sets - mean
    # A set of equal rewards has a rounding-error mean; its advantages are exactly 0.
    flat = sets.amax(dim=1, keepdim=True) == sets.amin(dim=1, keepdim=True)
    if scale == "std":
        std = sets.std(dim=1, correction=0, keepdim=True)
        flat = flat | (std <= eps * mean.abs().clamp_min(1.0))
        centered = centered / std.clamp_min(eps)
    centered = torch.where(flat, torch.zeros_like(centered), centered)
    return centered.reshape(n)


def clip_advantages(advantages: torch.Tensor, *, a_min: float, a_max: float) -> torch.Tensor:
    """Clip advantages to [a_min, a_max] (the paper's A_min, A_max; typically ±β0).

    Args:
        advantages: (N,) advantages.

    Returns:
        (N,) clipped advantages.
    """
    if a_min > a_max:
        raise ValueError(f"a_min ({a_min}) must not exceed a_max ({a_max})")
    return advantages.clamp(min=a_min, max=a_max)
