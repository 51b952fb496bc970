"""Held-out evaluation shared by the flow tasks: reward, diversity and W2 proxy of a policy."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from adrpo.core.flow_losses import squared_error
from adrpo.core.metrics import grouped_diversity
from adrpo.core.paths import StraightPath
from adrpo.errors import ConfigError


def check_eval_samples(eval_samples: int) -> None:
    """Refuse fewer than 2 samples per eval prompt before a task loads anything: diversity is a
    mean pairwise distance, which one sample does not have."""
    if isinstance(eval_samples, bool) or not isinstance(eval_samples, int) or eval_samples < 2:
        raise ConfigError(f"task_args.eval_samples must be an int >= 2 (diversity is a pairwise distance), got {eval_samples!r}")


@torch.no_grad()
def evaluate_flow_policy(
    trainer,
    prompts: Sequence[str],
    *,
    x0: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    reward: Callable[[torch.Tensor, Sequence[str]], torch.Tensor],
    embed: Callable[[torch.Tensor], torch.Tensor],
    group: int,
    num_steps: int,
) -> tuple[dict[str, float], torch.Tensor]:
    """Metrics of a FlowTrainer's current policy on fixed noise, and its samples; every pass
    (sampling, velocities, reward, embedding) runs in the trainer's micro-batches.

    Args:
        prompts: N prompt-major prompts (G = ``group`` samples of each).
        x0: (N, *D) sampling noise; noise, t: (N, *D) and (N,) for the W2 proxy's paths.

    Returns:
        {"reward": mean reward, "diversity": mean over prompts of the mean pairwise embedding
        distance, "w2": mean ‖v_θ − v_ref‖² over x_t on straight paths from ``noise`` to the
        policy's own samples, and with a moving reference (``sync_ref_model``) "w2_base": the same
        to the base model at the same x_t}, and the (N, *D) samples.
    """
    x1 = trainer.sample(prompts, x0=x0, num_steps=num_steps)
    n, device = len(x1), x1.device
    t = t.to(device)
    x_t = StraightPath().interpolate(noise.to(device), x1, t)
    cond = trainer.policy.encode_prompts(prompts)
    v = trainer.policy_velocity(x_t, t, cond)
    rewards = trainer.in_chunks(lambda s: torch.as_tensor(reward(x1[s], prompts[s]), device=device), n)
    embeddings = trainer.in_chunks(lambda s: embed(x1[s]), n)
    metrics = {
        "reward": rewards.mean().item(),
        "diversity": grouped_diversity(embeddings, group_size=group).mean().item(),
        "w2": squared_error(v, trainer.reference_velocity(x_t, t, cond)).mean().item(),
    }
    if trainer.config.sync_ref_model:  # w2 is to the moving reference: the drift from the base too
        metrics["w2_base"] = squared_error(v, trainer.base_velocity(x_t, t, cond)).mean().item()
    return metrics, x1
