"""ADRPO for verl: the actor's KL term becomes (β0 − A_clip)·KL per response (paper Eq. 7).

verl 0.9.1 adds ``kl_loss_coef · agg_loss(kl_penalty(log_prob, ref_log_prob, kl_loss_type), response_mask,
loss_agg_mode, **global_batch_info)`` to the actor loss inside ``verl.workers.utils.losses.ppo_loss``, the
one KL-loss path of its actor (the engine workers; 0.9.1 has no separate dp_actor). This module wraps
that function. For a call with ADRPO switched on, ``kl_penalty`` as ``ppo_loss`` sees it returns verl's own
per-token KL (B, T) times w = (β0 − A_clip)/β0 (B, 1); verl's own ``agg_loss`` (every ``loss_agg_mode``,
with its global-batch normalisation) and its ``× kl_loss_coef`` (= β0) then give agg((β0 − A_clip)·KL).
With every A = 0, w is exactly 1.0 and loss and gradients are stock verl's bit for bit.

Loaded by ``import verl`` through the ``verl.plugins`` entry point (or with
``VERL_USE_EXTERNAL_MODULES=adrpo.integrations.verl``); no other part of adrpo imports it.

Settings, all in verl's actor config (``actor_rollout_ref.actor``):

- verl's own ``use_kl_loss`` (must be true), ``kl_loss_coef`` (β0, > 0), ``kl_loss_type``, ``loss_agg_mode``;
- ``policy_loss._target_=adrpo.integrations.verl.ADRPOPolicyLossConfig`` switches ADRPO on; its fields
  ``use_adrpo`` (default true), ``adrpo_adv_clip_min`` / ``adrpo_adv_clip_max`` (A_min / A_max, default
  ∓β0) and ``adrpo_adv_coef_scale`` (s, default 1: the coefficient is β0 − clip(s·A, A_min, A_max)).

A misspelt field fails where verl builds the config; an inconsistent one (ADRPO without ``use_kl_loss``,
β0 ≤ 0, A_min > A_max) fails in ``ActorConfig.__post_init__``, i.e. in verl's ``validate_config`` at start-up.

A per response: verl's ``advantages`` are (B, T). GRPO's are one value repeated over a response's tokens,
so the masked mean over the response tokens is that value (for per-token advantages such as GAE it is the
response's mean advantage). A row with no response token gets A = 0; it adds no KL anyway.

Metrics: ``kl_loss`` stays verl's unweighted KL (recomputed with verl's ``agg_loss``), ``kl_coef`` is β0,
and ``adrpo/coef_mean``, ``adrpo/coef_min``, ``adrpo/coef_max``, ``adrpo/frac_clipped``,
``adrpo/frac_negative`` (over one micro-batch's responses; verl averages means over micro-batches and
ranks and takes min / max over all) are logged by verl as ``actor/adrpo/...``. Not covered:
``algorithm.use_kl_in_reward`` (verl's in-reward KL penalty keeps its own fixed or adaptive β).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import inspect
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from verl.utils.metric import AggregationType, Metric
from verl.workers.config import ActorConfig, PolicyLossConfig
from verl.workers.utils import losses as verl_losses

from adrpo.core.coefficient import adaptive_coefficient
from adrpo.errors import ConfigError

TESTED_VERL_VERSIONS = ("0.9.1",)

# Modules that hold verl's ppo_loss under that name: the loss module, and the two that import it by name.
_HOLDERS = ("verl.workers.utils.losses", "verl.workers.engine_workers", "verl.trainer.distillation.losses")
_STOCK_PPO_LOSS = inspect.unwrap(verl_losses.ppo_loss)
_STOCK_ACTOR_POST_INIT = inspect.unwrap(ActorConfig.__post_init__)
_AGGREGATION = {
    "coef_mean": AggregationType.MEAN,
    "coef_min": AggregationType.MIN,
    "coef_max": AggregationType.MAX,
    "frac_clipped": AggregationType.MEAN,
    "frac_negative": AggregationType.MEAN,
}


def check_verl_version(version: str) -> None:
    """Refuse a verl the wrap was not tested with: it reaches into ``ppo_loss``'s globals."""
    if version not in TESTED_VERL_VERSIONS:
        raise RuntimeError(
            f"adrpo.integrations.verl wraps verl's ppo_loss as verl {', '.join(TESTED_VERL_VERSIONS)} writes it and is "
            f"tested with that version only; found verl {version}. Install the tested one: pip install 'adrpo[verl]'"
        )


def installed_verl_version() -> str:
    """The installed verl distribution's version (its metadata, so a partly imported verl is fine)."""
    return importlib.metadata.version("verl")


@dataclass
class ADRPOPolicyLossConfig(PolicyLossConfig):
    """verl's ``PolicyLossConfig`` plus ADRPO's fields; naming it as ``policy_loss._target_`` switches ADRPO on.

    Args:
        use_adrpo: scale the KL loss per response by β0 − clip(s·A); false leaves verl's loss as it is.
        adrpo_adv_clip_min: A_min of the coefficient's advantage clip; None means −kl_loss_coef.
        adrpo_adv_clip_max: A_max; None means +kl_loss_coef. Above kl_loss_coef warns (negative coefficient).
        adrpo_adv_coef_scale: s, the factor on A before it is clipped; 1.0 is the paper's rule.
    """

    use_adrpo: bool = True
    adrpo_adv_clip_min: float | None = None
    adrpo_adv_clip_max: float | None = None
    adrpo_adv_coef_scale: float = 1.0

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        if self.use_adrpo:
            check_verl_version(installed_verl_version())
        if self.adrpo_adv_coef_scale < 0:
            raise ConfigError(f"policy_loss.adrpo_adv_coef_scale must be >= 0, got {self.adrpo_adv_coef_scale}")
        low, high = self.adrpo_adv_clip_min, self.adrpo_adv_clip_max
        if low is not None and high is not None and low > high:
            raise ConfigError(f"policy_loss.adrpo_adv_clip_min ({low}) must be <= policy_loss.adrpo_adv_clip_max ({high})")


@dataclass(frozen=True)
class ADRPOSettings:
    """ADRPO's coefficient settings read from a verl actor config: β0 − clip(scale·A, a_min, a_max)."""

    beta0: float
    a_min: float
    a_max: float
    scale: float


def adrpo_settings(config: ActorConfig) -> ADRPOSettings | None:
    """The settings of a verl actor config, None when ADRPO is off; an inconsistent one raises naming the field."""
    loss = config.policy_loss
    if not (isinstance(loss, ADRPOPolicyLossConfig) and loss.use_adrpo):
        return None
    if not config.use_kl_loss:
        raise ConfigError("policy_loss.use_adrpo=True scales verl's KL loss per response: set actor.use_kl_loss=True")
    beta0 = config.kl_loss_coef
    if not beta0 > 0:
        raise ConfigError(f"actor.kl_loss_coef is ADRPO's β0 and must be > 0 (the coefficient is β0 − A), got {beta0}")
    a_min = -beta0 if loss.adrpo_adv_clip_min is None else loss.adrpo_adv_clip_min
    a_max = beta0 if loss.adrpo_adv_clip_max is None else loss.adrpo_adv_clip_max
    if a_min > a_max:
        raise ConfigError(
            f"policy_loss.adrpo_adv_clip_min ({a_min}) must be <= policy_loss.adrpo_adv_clip_max ({a_max}); "
            f"an unset bound is ∓actor.kl_loss_coef ({beta0})"
        )
    return ADRPOSettings(beta0=beta0, a_min=a_min, a_max=a_max, scale=loss.adrpo_adv_coef_scale)


def check_actor_config(config: ActorConfig) -> None:
    """Start-up check of an actor config (run by ``ActorConfig.__post_init__`` once installed)."""
    settings = adrpo_settings(config)
    if settings is not None and settings.a_max > settings.beta0:
        warnings.warn(
            f"policy_loss.adrpo_adv_clip_max ({settings.a_max}) > actor.kl_loss_coef ({settings.beta0}): the coefficient "
            "β0 − A goes negative for the best responses, rewarding divergence from the reference",
            stacklevel=2,
        )


def row_advantage(advantages: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) advantages and (B, T) bool response mask -> (B,) mean advantage over each response's tokens.

    A row without response tokens gets 0.
    """
    mask = response_mask.to(advantages.dtype)  # (B, T)
    return (advantages * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)


def kl_weights(
    advantages: torch.Tensor, response_mask: torch.Tensor, settings: ADRPOSettings
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Each response's KL weight relative to β0, and the coefficient's diagnostics.

    Args:
        advantages: (B, T) verl's advantages.
        response_mask: (B, T) bool.
        settings: β0, clip range and scale.

    Returns:
        weight: (B,) (β0 − clip(s·A, a_min, a_max)) / β0; exactly 1.0 where A = 0.
        diagnostics: detached scalars of :func:`adrpo.core.coefficient.adaptive_coefficient` over the rows
            that have a response token (all rows if none has).
    """
    a = settings.scale * row_advantage(advantages, response_mask)  # (B,)
    rows = response_mask.any(dim=-1)
    if not rows.any():
        rows = torch.ones_like(rows)
    coefficient_rows, _, diagnostics = adaptive_coefficient(a[rows], beta0=settings.beta0, a_min=settings.a_min, a_max=settings.a_max)
    coefficient = torch.full_like(a, settings.beta0)
    coefficient[rows] = coefficient_rows
    return coefficient / settings.beta0, diagnostics


@contextlib.contextmanager
def _weighted_kl_penalty(weight: torch.Tensor, seen: list[torch.Tensor]) -> Iterator[None]:
    """For one ``ppo_loss`` call, its ``kl_penalty`` returns verl's per-token KL (B, T) × weight (B, 1).

    The unweighted KL, detached, is appended to ``seen`` for verl's ``kl_loss`` metric.
    """
    stock = verl_losses.kl_penalty

    def weighted(logprob: torch.Tensor, ref_logprob: torch.Tensor, kl_penalty: str) -> torch.Tensor:
        kld = stock(logprob=logprob, ref_logprob=ref_logprob, kl_penalty=kl_penalty)  # (B, T)
        seen.append(kld.detach())
        return kld * weight.to(device=kld.device, dtype=kld.dtype)

    verl_losses.kl_penalty = weighted
    try:
        yield
    finally:
        verl_losses.kl_penalty = stock


def ppo_loss(config: ActorConfig, model_output, data, dp_group=None):
    """verl's ``ppo_loss`` (same arguments and return), with ADRPO's per-response KL coefficient when switched on.

    ``data`` is verl's micro-batch TensorDict ("advantages", "response_mask": (B, T), padded or nested);
    returns ``(loss, metrics)`` with the ``adrpo/*`` diagnostics added to verl's metrics.
    """
    settings = adrpo_settings(config)
    if settings is None:
        return _STOCK_PPO_LOSS(config, model_output, data, dp_group)
    batch = data.select("advantages", "response_mask").to_padded_tensor()
    response_mask = batch["response_mask"].to(bool)  # (B, T)
    weight, diagnostics = kl_weights(batch["advantages"], response_mask, settings)
    seen: list[torch.Tensor] = []
    with _weighted_kl_penalty(weight.unsqueeze(1), seen):  # (B, 1)
        loss, metrics = _STOCK_PPO_LOSS(config, model_output, data, dp_group)
    kl = verl_losses.agg_loss(
        loss_mat=seen[0], loss_mask=response_mask, loss_agg_mode=config.loss_agg_mode, **config.global_batch_info
    )
    metrics["kl_loss"] = Metric(value=kl, aggregation=metrics["kl_loss"].aggregation)
    metrics.update({f"adrpo/{key}": Metric(value=value, aggregation=_AGGREGATION[key]) for key, value in diagnostics.items()})
    return loss, metrics


ppo_loss.__wrapped__ = _STOCK_PPO_LOSS


def _checked_actor_post_init(self: ActorConfig) -> None:
    """verl's ActorConfig.__post_init__, then :func:`check_actor_config` (a no-op while ADRPO is off)."""
    _STOCK_ACTOR_POST_INIT(self)
    check_actor_config(self)


_checked_actor_post_init.__wrapped__ = _STOCK_ACTOR_POST_INIT


def install() -> bool:
    """Put :func:`ppo_loss` in place of verl's in every module holding it, and the start-up check into ActorConfig.

    Idempotent. On a verl version outside ``TESTED_VERL_VERSIONS`` it changes nothing and warns (verl's
    plugin loader hides a plugin's exceptions); a config that switches ADRPO on then fails at start-up.
    """
    try:
        check_verl_version(installed_verl_version())
    except RuntimeError as error:
        warnings.warn(str(error), stacklevel=2)
        return False
    for name in _HOLDERS:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "ppo_loss", None) is _STOCK_PPO_LOSS:
            module.ppo_loss = ppo_loss
    ActorConfig.__post_init__ = _checked_actor_post_init
    return True


install()
