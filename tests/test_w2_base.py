"""The drift from the base model under a moving reference (``sync_ref_model``): the rows log
``w2_base`` beside ``w2`` (to the moving reference), the collapse monitor's ``w2_bound`` reads it,
and computing it changes no weight and no random stream."""

from __future__ import annotations

import copy

import pytest
import torch

from adrpo.core.monitor import read_alarms
from adrpo.flow.trainer import FlowTrainer
from conftest import PROMPTS, make_config, params_of, target_reward, tiny_model

LORA = dict(lora_rank=2, lora_target_modules=["proj_in", "proj"])
MODES = {"full": {}, "lora": LORA}
# The reference becomes the policy after every step: w2 to it is exactly 0, the policy drifts freely.
FOLLOWING = dict(sync_ref_model=True, ref_model_sync_steps=1, ref_model_mixup_alpha=1.0)


def probe(trainer: FlowTrainer):
    """Fixed (x_t, t, cond): (6, 4), (6,), (6, F)."""
    g = torch.Generator().manual_seed(7)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(6)]
    return torch.randn((6, 4), generator=g), torch.rand(6, generator=g), trainer.policy.encode_prompts(prompts)


@pytest.mark.parametrize("mode", MODES)
def test_a_moving_reference_run_drifting_from_the_base_fires_w2_bound_on_w2_base(tmp_path, mode):
    bound = 0.01
    config = make_config(tmp_path, num_steps=12, monitor_thresholds={"w2_max": bound}, **FOLLOWING, **MODES[mode])
    rows = FlowTrainer(config, tiny_model(), target_reward, PROMPTS).train()
    assert all(row["w2"] == 0.0 for row in rows)  # to the moving reference: never near the bound
    assert rows[-1]["w2_base"] > bound
    (alarm,) = read_alarms(tmp_path / "alarms.jsonl")
    assert (alarm.rule, alarm.metric) == ("w2_bound", "w2_base")
    first_past = next(row for row in rows if row["w2_base"] > bound)
    assert (alarm.step, alarm.value) == (first_past["step"], first_past["w2_base"])


@pytest.mark.parametrize("mode", MODES)
def test_a_fixed_reference_run_logs_no_w2_base_and_holds_no_base_copy(tmp_path, mode):
    trainer = FlowTrainer(make_config(tmp_path, num_steps=2, **MODES[mode]), tiny_model(), target_reward, PROMPTS)
    rows = trainer.train()
    assert all("w2_base" not in row and "w2" in row for row in rows)  # w2 is to the base already
    assert trainer.base is None
    x_t, t, cond = probe(trainer)
    assert torch.equal(trainer.base_velocity(x_t, t, cond), trainer.reference_velocity(x_t, t, cond))


@pytest.mark.parametrize("mode", MODES)
def test_w2_base_is_w2_until_the_reference_first_moves_then_the_base_stays_the_initial_model(tmp_path, mode):
    config = make_config(tmp_path, num_steps=6, sync_ref_model=True, ref_model_sync_steps=3, **MODES[mode])
    initial = tiny_model()
    trainer = FlowTrainer(config, copy.deepcopy(initial), target_reward, PROMPTS)
    rows = [trainer.step() for _ in range(6)]
    # steps 1-3 use the initial reference (the first sync is after step 3): the same points, the same value
    assert [row["w2_base"] for row in rows[:3]] == [row["w2"] for row in rows[:3]]
    assert all(row["w2_base"] > row["w2"] for row in rows[4:])
    x_t, t, cond = probe(trainer)
    with torch.no_grad():
        torch.testing.assert_close(trainer.base_velocity(x_t, t, cond), initial(x_t, t, cond), rtol=0, atol=1e-6)
    assert not torch.allclose(trainer.reference_velocity(x_t, t, cond), trainer.base_velocity(x_t, t, cond))
    if mode == "full":  # one more frozen copy, of its own storage
        base = list(trainer.base.parameters())
        assert all(not p.requires_grad for p in base)
        others = {p.data_ptr() for p in [*trainer.reference.parameters(), *trainer.policy.parameters()]}
        assert not others & {p.data_ptr() for p in base}
    else:  # the base is the policy with its adapters disabled: no copy
        assert trainer.base is None and trainer.reference is None


def test_w2_base_is_computed_at_logged_steps_only(tmp_path, monkeypatch):
    trainer = FlowTrainer(make_config(tmp_path, num_steps=7, logging_steps=3, sync_ref_model=True, ref_model_sync_steps=2),
                          tiny_model(), target_reward, PROMPTS)
    calls = []
    real = trainer.base_velocity

    def counting(x_t, t, cond):
        calls.append(trainer.state.step)  # called after the update, which counted the step
        return real(x_t, t, cond)

    monkeypatch.setattr(trainer, "base_velocity", counting)
    rows = trainer.train()
    assert [row["step"] for row in rows] == calls == [3, 6, 7]
    assert all("w2_base" in row for row in rows)


@pytest.mark.parametrize("mode", MODES)
def test_computing_w2_base_changes_no_weight_and_no_random_stream(tmp_path, mode):
    def run(divergence_to_base: bool):
        config = make_config(tmp_path / str(divergence_to_base), sync_ref_model=True, ref_model_sync_steps=2,
                             sampler_refresh_every=2, micro_batch_size=3, **MODES[mode])
        trainer = FlowTrainer(config, tiny_model(), target_reward, PROMPTS)
        rows = [trainer.step(divergence_to_base=divergence_to_base) for _ in range(5)]
        return trainer, rows, torch.get_rng_state()

    (with_base, rows, global_rng), (without, plain_rows, plain_global_rng) = run(True), run(False)
    assert [{k: v for k, v in row.items() if k != "w2_base"} for row in rows] == plain_rows
    assert all("w2_base" in row for row in rows) and not any("w2_base" in row for row in plain_rows)
    expected = params_of(without.policy)
    assert all(torch.equal(value, expected[name]) for name, value in params_of(with_base.policy).items())
    assert torch.equal(with_base.state.generator.get_state(), without.state.generator.get_state())
    assert torch.equal(global_rng, plain_global_rng)


@pytest.mark.parametrize("mode", MODES)
def test_base_samples_come_from_the_base_model_not_the_moved_reference(tmp_path, mode):
    """The image grid's Base row is ``sample(use_base=True)``: under a moving reference the initial model's
    samples, not those of the reference the run ended with."""
    initial = tiny_model()
    trainer = FlowTrainer(make_config(tmp_path, num_steps=4, **FOLLOWING, **MODES[mode]), copy.deepcopy(initial), target_reward, PROMPTS)
    trainer.train()
    x0 = torch.randn((4, 4), generator=torch.Generator().manual_seed(3))
    prompts = PROMPTS[:4]
    fixed = FlowTrainer(make_config(tmp_path / "fixed", num_steps=1, **MODES[mode]), copy.deepcopy(initial), target_reward, PROMPTS)
    expected = fixed.sample(prompts, x0=x0, use_reference=True)  # the untouched base, sampled the same way
    torch.testing.assert_close(trainer.sample(prompts, x0=x0, use_base=True), expected, rtol=0, atol=1e-6)
    moved = trainer.sample(prompts, x0=x0, use_reference=True)
    assert not torch.allclose(moved, expected)  # what the grid showed as "Base" before
    assert torch.equal(fixed.sample(prompts, x0=x0, use_base=True), fixed.sample(prompts, x0=x0, use_reference=True))


def test_the_held_out_evaluation_reports_w2_base_under_a_moving_reference(tmp_path, digits_task):
    from adrpo.flow.config import FlowConfig

    def trainer(**changes):
        config = FlowConfig(method="adrpo", prompts_per_step=2, group_size=4, sampling_steps=2, num_steps=3, checkpoint_steps=0,
                            report_to=["none"], progress_bar=False, output_dir=str(tmp_path / str(len(changes))), **changes)
        return FlowTrainer(config, digits_task.base_model(), digits_task.reward, digits_task.train_prompts, diversity_fn=digits_task.embed)

    moving = trainer(**FOLLOWING)
    moving.train()
    metrics = digits_task.evaluate(moving)
    assert metrics["w2"] == 0.0 and metrics["w2_base"] > 0.0  # the reference is the policy: only the base shows the drift
    assert "w2_base" not in digits_task.evaluate(trainer())
