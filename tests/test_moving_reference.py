"""The moving reference (``sync_ref_model``, TRL's TR-DPO convention) of the flow trainer, and
TRL's own ``sync_ref_model`` under ADRPOTrainer.

After optimizer step s with s % K == 0 (K = ``ref_model_sync_steps``; first at s = K) every
moving weight becomes w_ref·(1 − α) + α·w_θ, computed as TRL does (``mul_(1 − α).add_(w_θ,
alpha=α)``), so the expectations below are recomputed by hand from parameter snapshots and
compared with torch.equal.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings

import pytest
import torch

from adrpo.errors import ConfigError
from adrpo.flow.config import FlowConfig
from adrpo.flow.sampler import sample_euler
from adrpo.flow.trainer import FlowTrainer
from conftest import PROMPTS, fixed_noise, make_config, target_reward, tiny_model

LORA = dict(lora_rank=2, lora_target_modules=["proj_in", "proj"])
SYNC = dict(sync_ref_model=True, ref_model_sync_steps=2, ref_model_mixup_alpha=0.25)


def probe(trainer: FlowTrainer):
    """Fixed (x_t, t, cond) at which velocity fields are compared."""
    g = torch.Generator().manual_seed(7)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(6)]
    return torch.randn((6, 4), generator=g), torch.rand(6, generator=g), trainer.policy.encode_prompts(prompts)


def clones(tensors) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in tensors.items()}


def by_hand(old: dict[str, torch.Tensor], policy: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """TRL's update, recomputed: old·(1 − α) + α·policy."""
    return {name: old[name].clone().mul_(1.0 - alpha).add_(policy[name], alpha=alpha) for name in old}


def assert_same(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (as benchmarks/lora_memory.py counts)."""
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


# ----------------------------------------------------------------- config
def test_defaults_and_names_are_trls(tmp_path):
    from trl import GRPOConfig

    trl_defaults = {f.name: f.default for f in dataclasses.fields(GRPOConfig)}
    ours = {f.name: f.default for f in dataclasses.fields(FlowConfig)}
    for name in ("sync_ref_model", "ref_model_mixup_alpha", "ref_model_sync_steps"):
        assert ours[name] == trl_defaults[name], name
    assert (ours["sync_ref_model"], ours["ref_model_mixup_alpha"], ours["ref_model_sync_steps"]) == (False, 0.6, 512)
    trainer = FlowTrainer(make_config(tmp_path), tiny_model(), target_reward, PROMPTS)
    assert trainer.state.reference is None  # off by default: nothing extra is held or saved


@pytest.mark.parametrize("field, value, message", [
    ("ref_model_mixup_alpha", -0.1, r"ref_model_mixup_alpha must be in \[0, 1\], got -0\.1"),
    ("ref_model_mixup_alpha", 1.5, r"ref_model_mixup_alpha must be in \[0, 1\], got 1\.5"),
    ("ref_model_sync_steps", 0, r"ref_model_sync_steps must be >= 1, got 0"),
    ("ref_model_sync_steps", 1.5, r"ref_model_sync_steps must be int, got 1\.5"),
])
def test_invalid_settings_are_refused_by_field(tmp_path, field, value, message):
    with pytest.raises(ConfigError, match=message):
        make_config(tmp_path, sync_ref_model=True, **{field: value})


def test_edge_values_are_accepted(tmp_path):
    for alpha in (0.0, 1.0):
        assert make_config(tmp_path, ref_model_mixup_alpha=alpha, ref_model_sync_steps=1).ref_model_mixup_alpha == alpha


# ----------------------------------------------------------------- full fine-tuning
def test_full_finetuning_reference_mixes_in_the_policy_every_k_steps(tmp_path):
    from trl.trainer.callbacks import SyncRefModelCallback

    alpha = SYNC["ref_model_mixup_alpha"]
    trainer = FlowTrainer(make_config(tmp_path, num_steps=6, **SYNC), tiny_model(), target_reward, PROMPTS)
    assert set(trainer.state.reference) == set(trainer.trainable)  # every trainable parameter moves
    reference = dict(trainer.reference.named_parameters())
    for name, weight in trainer.state.reference.items():  # the state holds the reference's own tensors, no copy
        assert weight.data_ptr() == reference[name].data_ptr()
    old = clones(reference)
    for step in range(1, 7):
        before_step = copy.deepcopy(trainer.reference)
        trainer.step()
        policy = clones(trainer.trainable)
        now = clones(dict(trainer.reference.named_parameters()))
        if step % 2:  # steps 1, 3, 5: the reference stays put
            assert_same(now, old)
        else:  # steps 2, 4, 6 (the first sync is at step K, as in TRL)
            assert_same(now, by_hand(old, policy, alpha))
            for name in now:
                torch.testing.assert_close(now[name], alpha * policy[name] + (1 - alpha) * old[name])
                assert not torch.equal(now[name], old[name]), name
            SyncRefModelCallback._sync_target_model(trainer.policy, before_step, alpha)  # TRL's own update
            assert_same(clones(dict(before_step.named_parameters())), now)
        old = now
    x_t, t, cond = probe(trainer)
    with torch.no_grad():  # the loss and w2 use the moved reference
        assert torch.equal(trainer.reference_velocity(x_t, t, cond), trainer.reference(x_t, t, cond))


# ----------------------------------------------------------------- LoRA
def test_lora_reference_adapters_follow_the_rule_on_one_base(tmp_path):
    alpha = SYNC["ref_model_mixup_alpha"]
    base = tiny_model()
    untouched = copy.deepcopy(base).eval()
    trainer = FlowTrainer(make_config(tmp_path, num_steps=4, **LORA, **SYNC), base, target_reward, PROMPTS)
    # One base: the policy's parameters plus adapter-sized reference adapters, no reference module.
    assert trainer.reference is None and set(trainer.state.reference) == set(trainer.trainable)
    adapters = storage_bytes(trainer.trainable.values())
    held = storage_bytes([*trainer.policy.parameters(), *trainer.state.reference.values()])
    assert held == storage_bytes(untouched.parameters()) + 2 * adapters
    frozen = {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if not p.requires_grad}

    x_t, t, cond = probe(trainer)
    with torch.no_grad():  # step 0: base + initial adapters (B = 0) is the base, bit for bit
        assert torch.equal(trainer.reference_velocity(x_t, t, cond), untouched(x_t, t, cond))
    old = clones(trainer.state.reference)
    for step in range(1, 5):
        trainer.step()
        policy = clones(trainer.trainable)
        now = clones(trainer.state.reference)
        assert_same(now, old if step % 2 else by_hand(old, policy, alpha))
        old = now
    assert any(not torch.equal(old[n], policy[n]) for n in old)
    after = dict(trainer.policy.named_parameters())
    for name, value in frozen.items():
        assert torch.equal(after[name], value), name

    # The reference velocity is a direct computation with the mixed adapters loaded.
    direct = copy.deepcopy(trainer.policy).eval()
    with torch.no_grad():
        for name, param in direct.named_parameters():
            if name in old:
                param.copy_(old[name])
        v_ref = trainer.reference_velocity(x_t, t, cond)
        assert torch.equal(v_ref, direct(x_t, t, cond))
        assert not torch.equal(v_ref, untouched(x_t, t, cond))  # it moved away from the base
    assert_same(clones(trainer.trainable), policy)  # the swap restored the policy exactly
    assert_same(clones(trainer.state.reference), old)
    x0 = fixed_noise(len(PROMPTS))
    expected = sample_euler(direct, direct.encode_prompts(PROMPTS), x0, num_steps=trainer.config.sampling_steps)
    assert torch.equal(trainer.sample(PROMPTS, x0=x0, use_reference=True), expected)


def test_lora_without_sync_keeps_the_base_with_adapters_disabled(tmp_path):
    base = tiny_model()
    untouched = copy.deepcopy(base).eval()
    trainer = FlowTrainer(make_config(tmp_path, num_steps=3, **LORA), base, target_reward, PROMPTS)
    trainer.train()
    assert trainer.reference is None and trainer.state.reference is None
    assert storage_bytes(trainer.policy.parameters()) == storage_bytes(untouched.parameters()) + storage_bytes(trainer.trainable.values())
    x_t, t, cond = probe(trainer)
    with torch.no_grad():
        assert torch.equal(trainer.reference_velocity(x_t, t, cond), untouched(x_t, t, cond))


# ----------------------------------------------------------------- resume
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_resume_with_a_moving_reference_is_bitwise(tmp_path, lora):
    base = tiny_model()
    # Checkpoint at 3, between the syncs at 2 and 4: the saved reference has moved once.
    common = dict(checkpoint_steps=3, **SYNC, **(dict(LORA, sampler_refresh_every=2) if lora else {}))

    def trainer(run: str, num_steps: int) -> FlowTrainer:
        return FlowTrainer(make_config(tmp_path / run, num_steps=num_steps, **common), copy.deepcopy(base), target_reward, PROMPTS)

    straight = trainer("a", 6)
    rows_a = straight.train()
    trainer("b", 3).train()
    resumed = trainer("b", 6)
    rows_b = resumed.train(resume_from_checkpoint=True)

    assert rows_b == rows_a
    assert_same(clones(resumed.policy.state_dict()), clones(straight.policy.state_dict()))
    assert_same(clones(resumed.state.reference), clones(straight.state.reference))
    if not lora:
        assert_same(clones(resumed.reference.state_dict()), clones(straight.reference.state_dict()))
    x_t, t, cond = probe(straight)
    with torch.no_grad():
        assert torch.equal(resumed.reference_velocity(x_t, t, cond), straight.reference_velocity(x_t, t, cond))


def test_resume_with_another_sync_setting_is_refused_by_name(tmp_path):
    FlowTrainer(make_config(tmp_path, num_steps=2, **SYNC), tiny_model(), target_reward, PROMPTS).train()
    other = FlowTrainer(make_config(tmp_path, num_steps=4), tiny_model(), target_reward, PROMPTS)
    with pytest.raises(ConfigError, match=r"sync_ref_model: True -> False"):  # config.json's check
        other.train(resume_from_checkpoint=True)
    with pytest.raises(ConfigError, match=r"holds a moving reference but this run has sync_ref_model=False"):
        other.train(resume_from_checkpoint=True, allow_config_changes=list(SYNC))  # the checkpoint's own check


# ----------------------------------------------------------------- TRL's sync_ref_model under ADRPOTrainer
def test_adrpo_trainer_runs_with_trls_sync_ref_model(tmp_path):
    from datasets import Dataset
    from transformers import TrainerCallback

    from adrpo.llm.config import ADRPOConfig
    from adrpo.llm.tiny import char_tokenizer, save_model_and_tokenizer, tiny_causal_lm
    from adrpo.llm.trainer import ADRPOTrainer

    tokenizer = char_tokenizer(list("0123456789+="))
    path = save_model_and_tokenizer(tiny_causal_lm("qwen2", len(tokenizer), hidden=16, layers=1, heads=2), tokenizer, tmp_path / "model")

    class Record(TrainerCallback):
        """After each step (and after TRL's sync, which was registered first): policy and reference."""

        def __init__(self):
            self.steps: list[tuple[dict, dict]] = []

        def on_step_end(self, args, state, control, model=None, **kwargs):
            self.steps.append((clones(dict(model.named_parameters())), clones(dict(trainer.ref_model.named_parameters()))))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = ADRPOConfig(
            output_dir=str(tmp_path / "out"), bf16=False, gradient_checkpointing=False, use_cpu=True, report_to="none",
            save_strategy="no", disable_tqdm=True, max_steps=3, learning_rate=1e-2, per_device_train_batch_size=4,
            num_generations=4, max_completion_length=4, logging_steps=1, seed=0,
            sync_ref_model=True, ref_model_sync_steps=1, ref_model_mixup_alpha=0.5,
        )
        digit_sum = lambda completions, **kwargs: [float(sum(int(c) for c in s if c.isdigit())) for s in completions]  # noqa: E731
        trainer = ADRPOTrainer(model=str(path), reward_funcs=digit_sum, args=args,
                               train_dataset=Dataset.from_list([{"prompt": p} for p in ["1+2=", "3+4="]] * 8))
        record = Record()
        trainer.add_callback(record)
        initial = clones(dict(trainer.ref_model.named_parameters()))
        trainer.train()

    old = initial
    for policy, reference in record.steps:  # every step (K = 1): reference = 0.5·old + 0.5·policy
        assert_same(reference, by_hand(old, policy, 0.5))
        old = reference
    assert len(record.steps) == 3
    assert all(not torch.equal(record.steps[0][1][n], initial[n]) for n in initial)
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    assert all("adrpo/coef_mean" in row for row in trainer.state.log_history if "loss" in row)
