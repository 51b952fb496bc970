"""FlowTrainer end to end on a tiny MLP velocity model and an analytic reward.

The reward r(x, c) = −mean_d (x_d − target(c))² wants samples of "a ..." prompts at +1 and of
"b ..." prompts at −1 (see conftest), so a run that learns anything raises it for both.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest
import torch

from adrpo.flow import checkpointing
from adrpo.flow.config import METHODS
from adrpo.flow.sampler import sample_euler
from adrpo.flow.trainer import FlowTrainer, set_training
from conftest import PROMPTS, fixed_noise, make_config, params_of, target_reward, tiny_model

# Per-method settings under which 40 steps move the reward clearly. ORW's raw exp(0.5·r)
# weights barely differ on this reward, so it gets normalised weights with a sharper τ and a
# lighter leash, as in the digits presets.
METHOD_OVERRIDES = {
    "adrpo": {},
    "orw_cfm_w2": {"orw_tau": 5.0, "orw_normalize": True, "orw_alpha": 0.1},
    "raft": {},
    "flow_dpo": {},
}


def eval_reward(trainer: FlowTrainer, prompts: list[str], x0: torch.Tensor) -> torch.Tensor:
    """Per-sample reward of the trainer's samples from fixed noise: (N,)."""
    return target_reward(trainer.sample(prompts, x0=x0), prompts)


def probe_inputs(n: int = 6):
    """Fixed (x_t, t, prompts) at which two velocity fields are compared."""
    g = torch.Generator().manual_seed(7)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
    return torch.randn((n, 4), generator=g), torch.rand(n, generator=g), prompts


# ----------------------------------------------------------------- every method learns
def test_method_table_covers_config_methods():
    assert set(METHOD_OVERRIDES) == set(METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_each_method_raises_reward_and_changes_parameters(tmp_path, method):
    config = make_config(tmp_path, method=method, num_steps=40, **METHOD_OVERRIDES[method])
    trainer = FlowTrainer(config, tiny_model(), target_reward, PROMPTS)
    prompts = PROMPTS * 8
    x0 = fixed_noise(len(prompts))
    before_params = params_of(trainer.policy)
    before = eval_reward(trainer, prompts, x0).mean().item()

    rows = trainer.train()

    after = eval_reward(trainer, prompts, x0).mean().item()
    assert after > before + 0.2, f"{method}: reward {before:.3f} -> {after:.3f}"
    changed = [n for n, p in trainer.policy.named_parameters() if not torch.equal(p, before_params[n])]
    assert changed, f"{method}: no parameter changed"
    # One row per step (logging_steps=1), identical to what metrics.jsonl holds.
    assert [row["step"] for row in rows] == list(range(1, 41))
    on_disk = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert on_disk == rows
    for row in rows:
        assert all(isinstance(v, (int, float)) for v in row.values())
    # A final checkpoint is written even with checkpoint_steps=0.
    assert checkpointing.latest_checkpoint(tmp_path / "checkpoints") == tmp_path / "checkpoints" / "step-00000040"


def test_adrpo_logs_coefficient_diagnostics_and_drifts_from_reference(tmp_path):
    trainer = FlowTrainer(make_config(tmp_path, num_steps=10), tiny_model(), target_reward, PROMPTS)
    rows = trainer.train()
    for key in ("loss", "reward_mean", "reward_std", "w2", "match", "coef_mean", "coef_min", "coef_max",
                "frac_clipped", "frac_negative", "grad_norm"):
        assert key in rows[-1], key
    assert rows[-1]["w2"] > 0
    for row in rows:
        # β0 = 1, advantages clipped to ±1: the coefficient 1 − A lies in [0, 2].
        assert 0.0 <= row["coef_min"] <= row["coef_mean"] <= row["coef_max"] <= 2.0
        assert 0.0 <= row["frac_clipped"] <= 1.0
        assert row["frac_negative"] == 0.0  # a_max = β0 cannot make the coefficient negative
        assert row["grad_norm"] >= 0


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_first_step_w2_is_exactly_zero(tmp_path, lora):
    extra = {"lora_rank": 2, "lora_target_modules": ["proj_in", "proj"]} if lora else {}
    trainer = FlowTrainer(make_config(tmp_path, **extra), tiny_model(), target_reward, PROMPTS)
    first = trainer.step()
    assert first["w2"] == 0.0
    second = trainer.step()
    assert second["w2"] > 0.0  # the update of step 1 moved the policy off the reference


# ----------------------------------------------------------------- samples stay with their rewards
class PathSpy:
    """Wraps the trainer's StraightPath and keeps the (x0, x1, t) of every call."""

    def __init__(self, path):
        self.path = path
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def sample(self, x0, x1, t):
        self.calls.append((x0.clone(), x1.clone(), t.clone()))
        return self.path.sample(x0, x1, t)


def spy_on_losses(trainer: FlowTrainer):
    batches = []
    real = trainer.loss_fn

    def loss_fn(batch, cfg):
        batches.append(batch)
        return real(batch, cfg)

    trainer.loss_fn = loss_fn
    return batches


def test_rewards_stay_aligned_with_samples_and_both_prompts_improve(tmp_path):
    prompts = ["a x", "b y"]  # opposite targets: +1 and −1
    trainer = FlowTrainer(make_config(tmp_path, num_steps=40, group_size=4), tiny_model(), target_reward, prompts)
    eval_prompts = [p for p in prompts for _ in range(16)]
    x0 = fixed_noise(len(eval_prompts))
    before = eval_reward(trainer, eval_prompts, x0).view(2, 16).mean(dim=1)  # (B,) per prompt

    trainer.train()

    after = eval_reward(trainer, eval_prompts, x0).view(2, 16).mean(dim=1)
    assert (after > before + 0.2).all(), f"per-prompt reward {before.tolist()} -> {after.tolist()}"
    # Samples moved towards their own prompt's target.
    samples = trainer.sample(eval_prompts, x0=x0).view(2, 16, 4)
    assert samples[0].mean() > samples[1].mean()


def test_loss_sees_each_samples_own_reward(tmp_path):
    """Each step's rewards, recomputed from the x1 its paths end at in the reward's prompt order,
    are exactly the rewards the loss received: x1 and rewards are never reordered apart."""
    seen_prompts = []

    def reward(samples, prompts):
        seen_prompts.append(list(prompts))
        return target_reward(samples, prompts)

    trainer = FlowTrainer(make_config(tmp_path, num_steps=3, group_size=3, prompts_per_step=2), tiny_model(), reward, PROMPTS)
    path = trainer.path = PathSpy(trainer.path)
    batches = spy_on_losses(trainer)
    trainer.train()
    for batch, (_, x1, _), prompts in zip(batches, path.calls, seen_prompts):
        assert prompts[0::3] == prompts[1::3] == prompts[2::3]  # prompt-major groups of G = 3
        torch.testing.assert_close(batch.rewards, target_reward(x1, prompts), rtol=0, atol=0)
        assert batch.group_size == 3 and batch.rewards.shape == (6,)


# ----------------------------------------------------------------- Flow-DPO pairs
def test_flow_dpo_pairs_share_time_and_noise(tmp_path):
    trainer = FlowTrainer(make_config(tmp_path, method="flow_dpo", num_steps=3, group_size=4), tiny_model(), target_reward, PROMPTS)
    path = trainer.path = PathSpy(trainer.path)
    batches = spy_on_losses(trainer)
    trainer.train()
    assert len(batches) == 3
    for batch, (x0, x1, t) in zip(batches, path.calls):
        winners, losers = batch.pairs
        assert winners.shape == losers.shape == (2 * 2,)  # B·⌊G/2⌋
        assert torch.equal(t[winners], t[losers])
        assert torch.equal(x0[winners], x0[losers])
        assert not torch.equal(x1[winners], x1[losers])  # different samples, same (t, x0)
        assert (batch.rewards[winners] >= batch.rewards[losers]).all()
        # Winner and loser of a pair come from the same prompt's group of G = 4.
        assert torch.equal(winners // 4, losers // 4)
        # Only pair members share a draw: N − P distinct times.
        assert len(torch.unique(t)) == len(t) - len(winners)


def test_flow_dpo_with_all_pairs_tied_logs_strict_json(tmp_path):
    def constant_reward(samples, prompts):
        return torch.zeros(len(prompts))

    trainer = FlowTrainer(make_config(tmp_path, method="flow_dpo", num_steps=1), tiny_model(), constant_reward, PROMPTS)
    rows = trainer.train()
    assert rows[0]["loss"] == 0.0 and rows[0]["grad_norm"] == 0.0  # tied pairs teach nothing

    def refuse(token):
        raise ValueError(f"non-JSON constant {token}")

    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=refuse)


def test_unpaired_methods_draw_independent_t_and_noise(tmp_path):
    trainer = FlowTrainer(make_config(tmp_path, num_steps=1), tiny_model(), target_reward, PROMPTS)
    path = trainer.path = PathSpy(trainer.path)
    batches = spy_on_losses(trainer)
    trainer.train()
    x0, _, t = path.calls[0]
    assert batches[0].pairs is None
    assert len(torch.unique(t)) == len(t)
    assert len(torch.unique(x0[:, 0])) == len(x0)


# ----------------------------------------------------------------- resume
def _final_params(trainer: FlowTrainer) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in trainer.policy.state_dict().items()}


@pytest.mark.parametrize("refresh, lora", [(1, False), (2, False), (2, True)], ids=["on_policy", "snapshot", "lora_snapshot"])
def test_resume_is_bitwise_identical_to_uninterrupted_run(tmp_path, refresh, lora):
    base = tiny_model()
    common = dict(method="adrpo", sampler_refresh_every=refresh, checkpoint_steps=3)
    if lora:
        common.update(lora_rank=2, lora_target_modules=["proj_in", "proj"])

    run_a = FlowTrainer(make_config(tmp_path / "a", num_steps=6, **common), copy.deepcopy(base), target_reward, PROMPTS)
    rows_a = run_a.train()
    assert [p.name for p in checkpointing.list_checkpoints(tmp_path / "a" / "checkpoints")] == ["step-00000003", "step-00000006"]

    first = FlowTrainer(make_config(tmp_path / "b", num_steps=3, **common), copy.deepcopy(base), target_reward, PROMPTS)
    first.train()
    resumed = FlowTrainer(make_config(tmp_path / "b", num_steps=6, **common), copy.deepcopy(base), target_reward, PROMPTS)
    assert resumed.state.step == 0
    rows_b = resumed.train(resume_from_checkpoint=True)

    assert resumed.state.step == 6
    params_a, params_b = _final_params(run_a), _final_params(resumed)
    assert params_a.keys() == params_b.keys()
    for name in params_a:
        assert torch.equal(params_a[name], params_b[name]), name
    assert rows_b == rows_a
    assert [row["step"] for row in rows_b] == [1, 2, 3, 4, 5, 6]
    assert torch.equal(run_a.state.generator.get_state(), resumed.state.generator.get_state())
    if refresh > 1:
        for name, value in run_a.state.snapshot.items():
            assert torch.equal(value, resumed.state.snapshot[name]), name


def test_resume_true_without_checkpoint_starts_fresh(tmp_path):
    trainer = FlowTrainer(make_config(tmp_path, num_steps=2), tiny_model(), target_reward, PROMPTS)
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 9, "loss": 1.0}) + "\n")  # stale rows
    rows = trainer.train(resume_from_checkpoint=True)
    assert [row["step"] for row in rows] == [1, 2]


def _tree_digest(path: Path) -> dict[str, str]:
    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.rglob("*")) if f.is_file()}


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    config = make_config(tmp_path, num_steps=6, checkpoint_steps=3)
    trainer = FlowTrainer(config, tiny_model(), target_reward, PROMPTS)
    root = tmp_path / "checkpoints"
    real_save = trainer.accelerator.save_state
    calls: list[str] = []
    digest_before_crash = {}

    def flaky_save(output_dir=None, **kwargs):
        calls.append(str(output_dir))
        if len(calls) == 2:
            digest_before_crash.update(_tree_digest(root / "step-00000003"))
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"half a model")
            raise OSError("disk full")
        return real_save(output_dir, **kwargs)

    monkeypatch.setattr(trainer.accelerator, "save_state", flaky_save)
    with pytest.raises(OSError, match="disk full"):
        trainer.train()

    first = root / "step-00000003"
    assert Path(calls[1]).name.startswith(".tmp-")
    assert checkpointing.latest_checkpoint(root) == first
    assert checkpointing.list_checkpoints(root) == [first]
    assert not (root / "step-00000006").exists()
    assert digest_before_crash and _tree_digest(first) == digest_before_crash
    crashed_rows = checkpointing.MetricsLog(tmp_path / "metrics.jsonl").read()
    assert [row["step"] for row in crashed_rows] == [1, 2, 3, 4, 5, 6]

    # A new process resumes from step 3 and recomputes steps 4–6 exactly as the crashed run did.
    resumed = FlowTrainer(config, tiny_model(), target_reward, PROMPTS)
    rows = resumed.train(resume_from_checkpoint=True)
    assert rows == crashed_rows
    for name, value in _final_params(trainer).items():
        assert torch.equal(value, resumed.policy.state_dict()[name]), name
    assert checkpointing.list_checkpoints(root) == [first, root / "step-00000006"]
    assert not list(root.glob(".tmp-*"))  # the stale temporary was pruned by the next save


def test_resume_from_explicit_path_and_pruning(tmp_path):
    config = make_config(tmp_path, num_steps=4, checkpoint_steps=1, keep_checkpoints=2)
    trainer = FlowTrainer(config, tiny_model(), target_reward, PROMPTS)
    rows = trainer.train()
    root = tmp_path / "checkpoints"
    assert [p.name for p in checkpointing.list_checkpoints(root)] == ["step-00000003", "step-00000004"]

    again = FlowTrainer(config, tiny_model(), target_reward, PROMPTS)
    resumed_rows = again.train(resume_from_checkpoint=str(root / "step-00000003"))
    assert resumed_rows == rows
    for name, value in _final_params(trainer).items():
        assert torch.equal(value, again.policy.state_dict()[name]), name


# ----------------------------------------------------------------- sampling snapshot
def test_sampling_snapshot_lags_policy_between_refreshes(tmp_path, monkeypatch):
    k = 3
    trainer = FlowTrainer(make_config(tmp_path, num_steps=7, sampler_refresh_every=k), tiny_model(), target_reward, PROMPTS)
    names = list(trainer.trainable)
    sampled_with: list[dict[str, torch.Tensor]] = []
    real_sample = trainer._sample

    def spy_sample(cond, x0, **kwargs):
        sampled_with.append({n: p.detach().clone() for n, p in trainer.trainable.items()})
        return real_sample(cond, x0, **kwargs)

    monkeypatch.setattr(trainer, "_sample", spy_sample)

    def equal(a, b):
        return all(torch.equal(a[n], b[n]) for n in names)

    for step in range(1, 8):
        snapshot_before = {n: v.clone() for n, v in trainer.state.snapshot.items()}
        policy_before = {n: p.detach().clone() for n, p in trainer.trainable.items()}
        trainer.step()
        # The step sampled from the snapshot, and the policy it then trained is its own.
        assert equal(sampled_with[-1], snapshot_before), step
        assert equal(sampled_with[-1], policy_before) == ((step - 1) % k == 0), step
        policy_after = {n: p.detach().clone() for n, p in trainer.trainable.items()}
        assert not equal(policy_after, policy_before)
        # Right after a refresh the snapshot is the policy; otherwise it lags behind.
        assert equal(trainer.state.snapshot, policy_after) == (step % k == 0), step


def test_sampling_weights_swap_in_the_snapshot_and_restore_the_policy_exactly(tmp_path):
    trainer = FlowTrainer(make_config(tmp_path, num_steps=2, sampler_refresh_every=5), tiny_model(), target_reward, PROMPTS)
    trainer.train()
    policy = {n: p.detach().clone() for n, p in trainer.trainable.items()}
    snapshot = {n: v.clone() for n, v in trainer.state.snapshot.items()}
    assert any(not torch.equal(policy[n], snapshot[n]) for n in policy)

    prompts, x0 = PROMPTS * 2, fixed_noise(8)
    with trainer._sampling_weights():
        from_snapshot = trainer.sample(prompts, x0=x0)
    reference_model = copy.deepcopy(trainer.policy)
    reference_model.load_state_dict(snapshot)
    expected = sample_euler(reference_model.eval(), reference_model.encode_prompts(prompts), x0, num_steps=trainer.config.sampling_steps)
    assert torch.equal(from_snapshot, expected)
    assert not torch.equal(from_snapshot, trainer.sample(prompts, x0=x0))
    for name, param in trainer.trainable.items():
        assert torch.equal(param, policy[name]), name
        assert torch.equal(trainer.state.snapshot[name], snapshot[name]), name


# ----------------------------------------------------------------- per-step shortcuts
def test_set_training_switches_every_module_and_keeps_an_overridden_train():
    class Counted(torch.nn.Linear):
        switches = 0

        def train(self, mode: bool = True):
            self.switches += 1
            return super().train(mode)

    for model in (tiny_model(), torch.nn.Sequential(torch.nn.Linear(2, 2), Counted(2, 2))):
        set_training(model, False)
        assert not any(m.training for m in model.modules())
        set_training(model, True)
        assert all(m.training for m in model.modules())
    assert model[1].switches == 2  # through nn.Module.train, not the loop


def test_encode_prompts_parses_each_distinct_prompt_once(monkeypatch):
    model = tiny_model()
    parsed = []
    parse = model._parse
    monkeypatch.setattr(model, "_parse", lambda prompt: parsed.append(prompt) or parse(prompt))
    first = model.encode_prompts(["a x", "b y", "a x"])
    assert first.tolist() == [[0, 0], [1, 1], [0, 0]]
    assert torch.equal(model.encode_prompts(["b y", "a x"]), first[1:])
    assert parsed == ["a x", "b y"]
    for _ in range(2):  # a refused prompt is not remembered
        with pytest.raises(ValueError, match="names 2 words of factor 0"):
            model.encode_prompts(["a b x"])


# ----------------------------------------------------------------- LoRA
def test_lora_trains_only_adapters_and_keeps_the_base_as_reference(tmp_path):
    base = tiny_model()
    untouched = copy.deepcopy(base).eval()
    config = make_config(tmp_path, num_steps=6, lora_rank=2, lora_target_modules=["proj_in", "proj"])
    trainer = FlowTrainer(config, base, target_reward, PROMPTS)
    assert trainer.reference is None  # no second copy of the weights
    x_t, t, prompts = probe_inputs()
    cond = trainer.policy.encode_prompts(prompts)

    with torch.no_grad():
        assert torch.equal(trainer.reference_velocity(x_t, t, cond), trainer.policy(x_t, t, cond))
        assert torch.equal(trainer.reference_velocity(x_t, t, cond), untouched(x_t, t, cond))

    trainable = {n for n, p in trainer.policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert any("proj_in" in n for n in trainable) and any("blocks.0.proj" in n for n in trainable)
    assert not any("proj_out" in n for n in trainable)
    frozen_before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if not p.requires_grad}
    lora_before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if p.requires_grad}

    rows = trainer.train()

    after = dict(trainer.policy.named_parameters())
    for name, value in frozen_before.items():
        assert torch.equal(after[name], value), name
    for name, value in lora_before.items():
        assert not torch.equal(after[name], value), name
    with torch.no_grad():
        v_ref = trainer.reference_velocity(x_t, t, cond)
        assert torch.equal(v_ref, untouched(x_t, t, cond))
        assert not torch.equal(trainer.policy(x_t, t, cond), v_ref)
    assert rows[0]["w2"] == 0.0 and rows[-1]["w2"] > 0.0
    # Sampling "the reference" runs the base model with the adapters off.
    x0 = fixed_noise(len(prompts))
    expected = sample_euler(untouched, untouched.encode_prompts(prompts), x0, num_steps=config.sampling_steps)
    assert torch.equal(trainer.sample(prompts, x0=x0, use_reference=True), expected)


def test_full_finetuning_reference_is_a_frozen_copy(tmp_path):
    base = tiny_model()
    untouched = copy.deepcopy(base).eval()
    trainer = FlowTrainer(make_config(tmp_path, num_steps=3), base, target_reward, PROMPTS)
    trainer.train()
    x_t, t, prompts = probe_inputs()
    cond = untouched.encode_prompts(prompts)
    with torch.no_grad():
        assert torch.equal(trainer.reference_velocity(x_t, t, cond), untouched(x_t, t, cond))
    assert not any(p.requires_grad for p in trainer.reference.parameters())


# ----------------------------------------------------------------- micro-batches
@pytest.mark.parametrize("method", METHODS)
def test_micro_batches_accumulate_exactly_the_full_batch_gradient(tmp_path, method):
    from adrpo.core.advantages import compute_advantages
    from adrpo.core.flow_losses import preference_pairs
    from adrpo.flow.methods import LossBatch

    g = torch.Generator().manual_seed(3)
    n, group = 8, 4
    x_t, u_t, t = torch.randn(n, 4, generator=g), torch.randn(n, 4, generator=g), torch.rand(n, generator=g)
    rewards = torch.randn(n, generator=g)
    advantages = compute_advantages(rewards, group_size=group, baseline="group", scale="std")
    pairs = preference_pairs(rewards, group_size=group) if method == "flow_dpo" else None
    grads, losses, diagnostics = [], [], []
    for micro in (None, 3):  # 3 does not divide N and splits groups and pairs
        config = make_config(tmp_path / str(micro), method=method, group_size=group, micro_batch_size=micro, **METHOD_OVERRIDES[method])
        trainer = FlowTrainer(config, tiny_model(), target_reward, PROMPTS)
        cond = trainer.policy.encode_prompts([PROMPTS[i // group] for i in range(n)])
        v_ref = (trainer.reference_velocity(x_t, t, cond) + 0.3 * u_t).detach()  # a reference away from the policy
        loss, out, v = trainer._loss_and_backward(
            x_t, t, cond, lambda vel, v_ref=v_ref: LossBatch(vel, u_t, v_ref, rewards, advantages, group, pairs)
        )
        grads.append({name: p.grad.clone() for name, p in trainer.trainable.items()})
        losses.append(loss)
        diagnostics.append(out.diagnostics)
    assert any(grad.abs().sum() > 0 for grad in grads[0].values())
    for name in grads[0]:
        scale = grads[0][name].abs().max().item()  # float32 summation order differs between the two
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-5 * scale + 1e-9)
    torch.testing.assert_close(losses[1], losses[0])
    assert diagnostics[0].keys() == diagnostics[1].keys()


def test_micro_batched_training_matches_whole_batches(tmp_path):
    rows = {}
    for micro in (None, 3):
        config = make_config(tmp_path / str(micro), num_steps=3, micro_batch_size=micro)
        rows[micro] = FlowTrainer(config, tiny_model(), target_reward, PROMPTS, diversity_fn=lambda x: x).train()
    for whole, chunked in zip(rows[None], rows[3]):
        assert whole.keys() == chunked.keys()
        for key in whole:
            assert chunked[key] == pytest.approx(whole[key], rel=1e-4, abs=1e-6), key


def test_gradient_checkpointing_needs_a_diffusers_model(tmp_path):
    with pytest.raises(ValueError, match="gradient_checkpointing: MLPVelocityModel has no enable_gradient_checkpointing"):
        FlowTrainer(make_config(tmp_path, gradient_checkpointing=True), tiny_model(), target_reward, PROMPTS)


def test_fsdp1_is_refused_by_field_and_fsdp2_and_zero3_are_let_through():
    from types import SimpleNamespace

    from accelerate import DistributedType

    from adrpo.flow.engine import check_engine

    with pytest.raises(ValueError, match="fsdp_version: 1"):
        check_engine(SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=False))
    check_engine(SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=True))
    check_engine(SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, is_fsdp2=False))


def test_lora_checkpoints_hold_only_the_adapters_and_refuse_other_lora_settings(tmp_path):
    from safetensors.torch import load_file

    lora = dict(lora_rank=2, lora_target_modules=["proj_in", "proj"])
    trainer = FlowTrainer(make_config(tmp_path / "lora", num_steps=1, **lora), tiny_model(), target_reward, PROMPTS)
    trainer.train()
    saved = load_file(tmp_path / "lora" / "checkpoints" / "step-00000001" / "model.safetensors")
    assert set(saved) == set(dict(trainer.model.named_parameters())) - {n for n, p in trainer.model.named_parameters() if not p.requires_grad}
    assert saved and all("lora_" in name for name in saved)
    full = FlowTrainer(make_config(tmp_path / "full", num_steps=1), tiny_model(), target_reward, PROMPTS)
    full.train()
    assert set(load_file(tmp_path / "full" / "checkpoints" / "step-00000001" / "model.safetensors")) == set(full.model.state_dict())

    other = FlowTrainer(make_config(tmp_path / "lora", num_steps=2, lora_rank=2, lora_target_modules=["proj"]), tiny_model(), target_reward, PROMPTS)
    with pytest.raises(ValueError, match="weights do not match the model's trainable ones .*other LoRA settings"):
        other.train(resume_from_checkpoint=True, allow_config_changes=["lora_target_modules"])  # past config.json's check
