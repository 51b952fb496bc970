"""The table of training objectives: each method is one loss from ``adrpo.core`` plus the
plumbing of its hyperparameters. Adding a method is one function here and one row in
:data:`LOSSES`; the training loop does not change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from adrpo.core.coefficient import adaptive_coefficient
from adrpo.core.flow_losses import FlowLoss, adrpo_fm_loss, flow_dpo_loss, orw_cfm_w2_loss, raft_loss
from adrpo.flow.config import FlowConfig


@dataclass
class LossBatch:
    """What a method sees of one step; N = B·G samples, prompt-major.

    v: (N, *D) policy velocity with gradient; u: (N, *D) target velocity;
    v_ref: (N, *D) reference velocity; rewards, advantages: (N,);
    pairs: (winners, losers) (P,) index tensors for paired methods, else None.
    """

    v: torch.Tensor
    u: torch.Tensor
    v_ref: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor
    group_size: int
    pairs: tuple[torch.Tensor, torch.Tensor] | None = None


def adrpo(batch: LossBatch, cfg: FlowConfig) -> FlowLoss:
    coefficient, clipped, diagnostics = adaptive_coefficient(
        batch.advantages, beta0=cfg.beta0, a_min=cfg.adv_clip_min, a_max=cfg.adv_clip_max
    )
    out = adrpo_fm_loss(batch.v, batch.u, batch.v_ref, advantages=clipped, coefficient=coefficient)
    out.diagnostics.update(diagnostics)
    return out


def orw_cfm_w2(batch: LossBatch, cfg: FlowConfig) -> FlowLoss:
    return orw_cfm_w2_loss(
        batch.v, batch.u, batch.v_ref,
        rewards=batch.rewards, tau=cfg.orw_tau, alpha=cfg.orw_alpha, normalize=cfg.orw_normalize,
    )


def raft(batch: LossBatch, cfg: FlowConfig) -> FlowLoss:
    return raft_loss(batch.v, batch.u, rewards=batch.rewards, group_size=batch.group_size, fraction=cfg.raft_fraction)


def flow_dpo(batch: LossBatch, cfg: FlowConfig) -> FlowLoss:
    assert batch.pairs is not None, "flow_dpo needs pairs"
    winners, losers = batch.pairs
    return flow_dpo_loss(
        batch.v, batch.u, batch.v_ref,
        winners=winners, losers=losers, beta=cfg.dpo_beta,
        valid=batch.rewards[winners] > batch.rewards[losers],
    )


LOSSES: dict[str, Callable[[LossBatch, FlowConfig], FlowLoss]] = {
    "adrpo": adrpo,
    "orw_cfm_w2": orw_cfm_w2,
    "raft": raft,
    "flow_dpo": flow_dpo,
}
# Methods whose pair members must share the time t and noise x0 (Diffusion-DPO's rule).
PAIRED = frozenset({"flow_dpo"})
