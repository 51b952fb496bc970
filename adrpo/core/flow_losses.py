"""Per-sample flow-matching losses: CFM, ADRPO-FM, ORW-CFM-W2, RAFT and Flow-DPO.

Every loss returns a :class:`FlowLoss`: an unreduced (N,) or (P,) loss whose ``.mean()`` is
the objective, plus detached diagnostics. Squared errors are averaged over the data
dimensions D (as the ORW-CFM reference code does), so loss scales do not grow with
resolution.

A useful identity (see docs): per sample, A·‖v − u‖² + (β0 − A)·‖v − v_ref‖² equals
β0·‖v − [v_ref + (A/β0)·(u − v_ref)]‖² up to a term free of v — a regression towards the
reference tilted by A/β0 towards the sample's path (away from it when A < 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class FlowLoss:
    """per_sample: (N,) or (P,) unreduced loss; diagnostics: detached scalars."""

    per_sample: torch.Tensor
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)


def squared_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over data dimensions of (a − b)²: (N, *D), (N, *D) -> (N,)."""
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")
    return (a - b).pow(2).flatten(1).mean(dim=1)


def _check_per_sample(name: str, value: torch.Tensor, n: int) -> None:
    if value.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(value.shape)}")


def cfm_loss(v: torch.Tensor, u: torch.Tensor) -> FlowLoss:
    """Conditional flow matching ‖v_θ(x_t, t, c) − u_t‖²: (N, *D) -> (N,). Used for pretraining."""
    return FlowLoss(squared_error(v, u))


def regularized_fm_loss(
    v: torch.Tensor,
    u: torch.Tensor,
    v_ref: torch.Tensor,
    *,
    match_weight: torch.Tensor,
    reg_weight: torch.Tensor,
) -> FlowLoss:
    """w_match·‖v − u‖² + w_reg·‖v − v_ref‖², the shape shared by ADRPO-FM and ORW-CFM-W2.

    Args:
        v: (N, *D) policy velocity v_θ(x_t, t, c), with gradient.
        u: (N, *D) target velocity u_t of the sample's path.
        v_ref: (N, *D) reference velocity, no gradient needed.
        match_weight: (N,) weight of the matching term.
        reg_weight: (N,) weight of the W2 term.

    Returns:
        (N,) loss; diagnostics ``match`` (mean ‖v − u‖²) and ``w2`` (mean ‖v − v_ref‖²).
    """
    n = v.shape[0]
    _check_per_sample("match_weight", match_weight, n)
    _check_per_sample("reg_weight", reg_weight, n)
    match = squared_error(v, u)
    w2 = squared_error(v, v_ref.detach())
    per_sample = match_weight.detach() * match + reg_weight.detach() * w2
    return FlowLoss(per_sample, {"match": match.detach().mean(), "w2": w2.detach().mean()})


def adrpo_fm_loss(
    v: torch.Tensor,
    u: torch.Tensor,
    v_ref: torch.Tensor,
    *,
    advantages: torch.Tensor,
    coefficient: torch.Tensor,
) -> FlowLoss:
    """ADRPO-FM, paper Eq. 6: A·‖v − u‖² + (β0 − A)·‖v − v_ref‖².

    Args:
        v: (N, *D) policy velocity, as in :func:`regularized_fm_loss`.
        u: (N, *D) target velocity u_t.
        v_ref: (N, *D) reference velocity.
        advantages: (N,) clipped advantages A; A < 0 reverses the matching gradient,
            pushing the policy away from that sample's path.
        coefficient: (N,) β0 − A from :func:`adrpo.core.coefficient.adaptive_coefficient`.

    Returns:
        (N,) loss and diagnostics as in :func:`regularized_fm_loss`.
    """
    return regularized_fm_loss(v, u, v_ref, match_weight=advantages, reg_weight=coefficient)


def orw_weights(rewards: torch.Tensor, *, tau: float, normalize: bool) -> torch.Tensor:
    """ORW-CFM weights w = exp(τ·r): (N,) -> (N,).

    With ``normalize`` the weights are rescaled to mean 1 over the batch
    (N·softmax(τ·r), computed without overflow); without it they are the paper's raw
    exp(τ·r), which overflows for large τ·r and is refused then.
    """
    if normalize:
        return rewards.numel() * torch.softmax(tau * rewards, dim=0)
    weights = torch.exp(tau * rewards)
    if not torch.isfinite(weights).all():
        raise ValueError(
            f"exp(tau·r) overflowed (tau={tau}, max reward {rewards.max().item():.4g}); "
            "set orw_normalize=True or lower orw_tau"
        )
    return weights


def orw_cfm_w2_loss(
    v: torch.Tensor,
    u: torch.Tensor,
    v_ref: torch.Tensor,
    *,
    rewards: torch.Tensor,
    tau: float,
    alpha: float,
    normalize: bool = False,
) -> FlowLoss:
    """ORW-CFM-W2 (Fan et al. 2025): exp(τ·r)·‖v − u‖² + α·‖v − v_ref‖².

    Args:
        v: (N, *D) policy velocity.
        u: (N, *D) target velocity u_t.
        v_ref: (N, *D) reference velocity.
        rewards: (N,) rewards of the samples x1 whose paths give u.
        tau: inverse temperature τ of the reward weighting.
        alpha: fixed W2 coefficient α.
        normalize: rescale the weights to mean 1 over the batch (see :func:`orw_weights`).

    Returns:
        (N,) loss; diagnostics of :func:`regularized_fm_loss` plus ``weight_max``.
    """
    weights = orw_weights(rewards, tau=tau, normalize=normalize)
    out = regularized_fm_loss(
        v, u, v_ref, match_weight=weights, reg_weight=torch.full_like(weights, alpha)
    )
    out.diagnostics["weight_max"] = weights.detach().max()
    return out


def top_fraction_mask(rewards: torch.Tensor, *, group_size: int, fraction: float) -> torch.Tensor:
    """(N,) bool mask of the best ``fraction`` of each prompt's G samples (at least one).

    Exactly k = max(1, round(fraction·G)) samples are selected per prompt; among tied
    rewards ``torch.topk`` decides which.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    groups = rewards.view(-1, group_size)  # (B, G)
    k = max(1, round(fraction * group_size))
    top = groups.topk(k, dim=1).indices  # (B, k)
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, top, True)
    return mask.view(-1)


def raft_loss(
    v: torch.Tensor, u: torch.Tensor, *, rewards: torch.Tensor, group_size: int, fraction: float
) -> FlowLoss:
    """RAFT (Dong et al. 2023): plain flow matching on the best samples of each prompt.

    Args:
        v: (N, *D) policy velocity.
        u: (N, *D) target velocity u_t.
        rewards: (N,) rewards, prompt-major with G = ``group_size`` samples per prompt.
        fraction: share of each prompt's samples kept.

    Returns:
        (N,) loss, zero for rejected samples and scaled by N / kept so that ``.mean()`` is
        the mean matching loss over the kept samples.
    """
    mask = top_fraction_mask(rewards, group_size=group_size, fraction=fraction).to(v.dtype)
    match = squared_error(v, u)
    per_sample = match * mask * (mask.numel() / mask.sum())
    return FlowLoss(per_sample, {"match": (match.detach() * mask).sum() / mask.sum()})


def preference_pairs(rewards: torch.Tensor, *, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair the i-th best with the i-th worst sample of each prompt.

    Args:
        rewards: (N,) prompt-major, G = ``group_size`` per prompt.

    Returns:
        winners, losers: (P,) indices into the N samples, P = B·⌊G/2⌋, with
        rewards[winners] >= rewards[losers].
    """
    if group_size < 2:
        raise ValueError(f"preference pairs need group_size >= 2, got {group_size}")
    groups = rewards.view(-1, group_size)  # (B, G)
    order = groups.argsort(dim=1, descending=True)  # (B, G)
    half = group_size // 2
    offsets = torch.arange(groups.shape[0], device=rewards.device).unsqueeze(1) * group_size  # (B, 1)
    winners = (order[:, :half] + offsets).reshape(-1)
    losers = (order.flip(1)[:, :half] + offsets).reshape(-1)
    return winners, losers


def flow_dpo_loss(
    v: torch.Tensor,
    u: torch.Tensor,
    v_ref: torch.Tensor,
    *,
    winners: torch.Tensor,
    losers: torch.Tensor,
    beta: float,
    valid: torch.Tensor | None = None,
) -> FlowLoss:
    """Diffusion-DPO (Wallace et al. 2024) written on velocities, one value per pair.

    With e(v) = ‖v − u‖² per sample, Δ = [e(v_w) − e(v_ref,w)] − [e(v_l) − e(v_ref,l)] and
    L = −log σ(−β·Δ) = softplus(β·Δ): the policy should fit the preferred sample better,
    relative to the reference, than the rejected one. The constants of the paper
    (T·ω(λ), 1/2) are folded into β.

    Args:
        v: (N, *D) policy velocity; winner and loser of a pair should share t and x0.
        u: (N, *D) target velocity u_t.
        v_ref: (N, *D) reference velocity.
        winners: (P,) indices of the preferred samples, from :func:`preference_pairs`.
        losers: (P,) indices of the rejected samples.
        beta: DPO inverse temperature.
        valid: optional (P,) bool; pairs marked False (e.g. reward ties) contribute 0.

    Returns:
        (P,) loss, zero for invalid pairs and scaled by P / valid so that ``.mean()`` is the
        mean over the valid pairs: the step size does not shrink with the share of ties
        (all zero when no pair is valid). Diagnostics ``pref_acc`` (share of valid pairs
        with Δ < 0; 0 when none is valid), ``frac_tied_pairs`` (share of invalid pairs) and
        ``w2``.
    """
    err = squared_error(v, u)
    err_ref = squared_error(v_ref.detach(), u)
    delta = (err[winners] - err_ref[winners]) - (err[losers] - err_ref[losers])  # (P,)
    valid = torch.ones_like(delta, dtype=torch.bool) if valid is None else valid
    num_valid = valid.sum().clamp_min(1)
    per_pair = F.softplus(beta * delta) * valid.to(delta.dtype) * (valid.numel() / num_valid)
    return FlowLoss(
        per_pair,
        {
            "pref_acc": ((delta.detach() < 0) & valid).sum() / num_valid,
            "frac_tied_pairs": 1.0 - valid.float().mean(),
            "w2": squared_error(v.detach(), v_ref.detach()).mean(),
        },
    )
