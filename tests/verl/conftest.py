"""Fixtures of the verl plugin's tests: a verl actor config and a micro-batch as verl's actor loss gets it.

These tests need verl 0.9.1, which lives in its own environment (``make verl-test``). Where verl is not
installed, as in the main environment, every test module skips itself with that reason, and
this file imports verl only inside its helpers.
"""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)

BETA0 = 0.04
PROMPT_LENS = (3, 2, 3, 1)  # left-padded to P = 3
RESPONSE_LENS = (5, 3, 1, 4)  # right-padded to R = 5; 13 response tokens
# The global batch a micro-batch belongs to, as verl's engine sets it: local (verl then normalises over
# the micro-batch) or global (two data-parallel ranks, 30 tokens and 8 responses in the mini-batch).
BATCH_INFO = {
    "local": dict(dp_size=1, batch_num_tokens=None, global_batch_size=None, loss_scale_factor=None),
    "global": dict(dp_size=2, batch_num_tokens=30, global_batch_size=8, loss_scale_factor=7),
}


def build_actor_config(*, adrpo: bool | None = True, loss_scale_factor: int | None = None, **fields):
    """verl's FSDP actor config with the KL loss on at β0 = 0.04; ``adrpo``: True on, False the ADRPO
    policy-loss config switched off, None verl's own PolicyLossConfig."""
    from verl.workers.config import FSDPActorConfig, PolicyLossConfig

    from adrpo.integrations.verl import ADRPOPolicyLossConfig

    adrpo_fields = fields.pop("policy_loss_fields", {})
    if adrpo is None:
        policy_loss = PolicyLossConfig()
    else:
        policy_loss = ADRPOPolicyLossConfig(use_adrpo=adrpo, **adrpo_fields)
    values = dict(
        strategy="fsdp",
        rollout_n=4,
        ppo_micro_batch_size_per_gpu=4,
        use_kl_loss=True,
        kl_loss_coef=BETA0,
        loss_scale_factor=loss_scale_factor,
        policy_loss=policy_loss,
    )
    values.update(fields)
    return FSDPActorConfig(**values)


def build_batch(row_advantages: list[float], batch_info: str = "local", seed: int = 0):
    """A padded micro-batch of B = 4 responses as verl's ``ppo_loss`` reads it, and the policy's log-probs.

    Returns:
        log_probs: (nnz,) leaf requiring grad, the model's packed per-token log-probs (prompt and response
            tokens of every row, as verl's ``no_padding_2_padding`` slices them).
        data: TensorDict with prompts (B, P), responses / response_mask / old_log_probs / ref_log_prob /
            advantages (B, R) (each row's advantage repeated over its response tokens, as GRPO's are),
            attention_mask (B, P + R) and the global-batch info.
    """
    from verl.utils import tensordict_utils as tu

    generator = torch.Generator().manual_seed(seed)
    prompt_lens, response_lens = torch.tensor(PROMPT_LENS), torch.tensor(RESPONSE_LENS)
    n, p, r = len(PROMPT_LENS), max(PROMPT_LENS), max(RESPONSE_LENS)
    prompt_mask = (torch.arange(p).unsqueeze(0) >= (p - prompt_lens).unsqueeze(1)).long()  # (B, P)
    response_mask = (torch.arange(r).unsqueeze(0) < response_lens.unsqueeze(1)).long()  # (B, R)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)  # (B, P + R)
    log_probs = (-2 * torch.rand(int(attention_mask.sum()), generator=generator)).requires_grad_()
    info = {k: v for k, v in BATCH_INFO[batch_info].items() if k != "loss_scale_factor"}
    data = tu.get_tensordict(
        {
            "prompts": torch.ones(n, p, dtype=torch.long),
            "responses": torch.ones(n, r, dtype=torch.long),
            "attention_mask": attention_mask,
            "response_mask": response_mask,
            "old_log_probs": -2 * torch.rand(n, r, generator=generator),
            "ref_log_prob": -2 * torch.rand(n, r, generator=generator),
            "advantages": torch.tensor(row_advantages).unsqueeze(1) * response_mask,
        },
        info,
    )
    return log_probs, data


@pytest.fixture
def actor_config():
    """:func:`build_actor_config`, for tests (conftest modules are not imported by name)."""
    return build_actor_config


@pytest.fixture
def batch():
    """:func:`build_batch`, for tests."""
    return build_batch
