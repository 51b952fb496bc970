"""What the flow side refuses, and how the refusal reads: bad rewards, bad configs, bad
prompts, a missing checkpoint. A bad reward mid-run must leave the run resumable.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from adrpo.errors import ConfigError
from adrpo.flow import checkpointing
from adrpo.flow.config import METHODS, FlowConfig
from adrpo.flow.trainer import FlowTrainer
from adrpo.rewards.base import RewardError
from adrpo.tasks.digits import PROMPTS as DIGIT_PROMPTS
from adrpo.tasks.digits import DigitsReward, mlp, prompt_ids
from conftest import PROMPTS, make_config, target_reward, tiny_model


# ----------------------------------------------------------------- rewards
class Recorder:
    """A reward that remembers the prompts it was given and returns ``make(samples, prompts)``."""

    __name__ = "recorded_reward"

    def __init__(self, make):
        self.make = make
        self.prompts: list[list[str]] = []

    def __call__(self, samples, prompts):
        self.prompts.append(list(prompts))
        return self.make(samples, prompts)


def _with_value_at(index: int, value: float):
    def make(samples, prompts):
        rewards = target_reward(samples, prompts)
        rewards[index] = value
        return rewards

    return make


@pytest.mark.parametrize("method", ["adrpo", "raft"])
@pytest.mark.parametrize("value, kind", [(math.nan, "NaN"), (math.inf, "inf"), (-math.inf, "inf")])
def test_non_finite_reward_names_method_step_sample_and_prompt(tmp_path, method, value, kind):
    reward = Recorder(_with_value_at(3, value))
    trainer = FlowTrainer(make_config(tmp_path, method=method), tiny_model(), reward, PROMPTS)
    with pytest.raises(RewardError) as info:
        trainer.step()
    message = str(info.value)
    prompt = reward.prompts[0][3]
    assert f"method={method!r}" in message
    assert "step 1" in message
    assert "reward 'recorded_reward'" in message
    assert f"sample 3 (prompt {prompt!r}) got {kind}" in message
    assert "(1 non-finite of 8)" in message
    assert trainer.state.step == 0  # nothing was applied


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda x, p: torch.zeros(len(p) - 1), "returned shape (7,); expected (8,)"),
        (lambda x, p: torch.zeros(len(p), 2), "returned shape (8, 2); expected (8,)"),
        (lambda x, p: None, "returned NoneType"),
        (lambda x, p: "0.5", "returned str"),
        (lambda x, p: ["high"] * len(p), "not numbers"),
    ],
    ids=["short", "two_columns", "none", "string", "strings"],
)
def test_malformed_reward_names_method_and_step(tmp_path, make, expected):
    trainer = FlowTrainer(make_config(tmp_path, method="flow_dpo"), tiny_model(), Recorder(make), PROMPTS)
    with pytest.raises(RewardError) as info:
        trainer.step()
    message = str(info.value)
    assert "method='flow_dpo'" in message and "step 1" in message
    assert expected in message


def test_nan_mid_training_keeps_earlier_rows_and_checkpoint_resumable(tmp_path):
    config = make_config(tmp_path, num_steps=6, checkpoint_steps=2, keep_checkpoints=3)
    calls = []

    def reward_nan_at_fourth_step(samples, prompts):
        calls.append(1)
        rewards = target_reward(samples, prompts)
        if len(calls) == 4:
            rewards[5] = math.nan
        return rewards

    trainer = FlowTrainer(config, tiny_model(), reward_nan_at_fourth_step, PROMPTS)
    with pytest.raises(RewardError, match=r"step 4, reward 'reward_nan_at_fourth_step': sample 5"):
        trainer.train()

    log = checkpointing.MetricsLog(tmp_path / "metrics.jsonl")
    rows = log.read()
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert all(math.isfinite(row["loss"]) for row in rows)
    root = tmp_path / "checkpoints"
    assert checkpointing.list_checkpoints(root) == [root / "step-00000002"]

    resumed = FlowTrainer(config, tiny_model(), target_reward, PROMPTS)
    new_rows = resumed.train(resume_from_checkpoint=True)
    assert [row["step"] for row in new_rows] == [1, 2, 3, 4, 5, 6]
    assert new_rows[:2] == rows[:2]  # the rows before the checkpoint are kept as written
    # Step 3 is recomputed from the checkpoint with the same random draws, so it matches.
    assert new_rows[2] == rows[2]
    assert all(math.isfinite(row["loss"]) for row in new_rows)


# ----------------------------------------------------------------- config validation
@pytest.mark.parametrize(
    "values, pieces",
    [
        ({"beta0": -0.5}, ["beta0", ">= 0", "-0.5"]),
        ({"adv_clip_min": 0.5, "adv_clip_max": 0.2}, ["adv_clip_min (0.5)", "adv_clip_max (0.2)"]),
        ({"adv_clip_min": 1.5}, ["adv_clip_min (1.5)", "adv_clip_max (1.0)"]),  # default max is +β0
        ({"method": "ppo"}, ["method", "'ppo'", *METHODS]),
        ({"method": "flow_dpo", "group_size": 1}, ["group_size", ">= 2", "flow_dpo"]),
        ({"advantage_baseline": "median"}, ["advantage_baseline", "'median'"]),
        ({"group_size": 0}, ["group_size", ">= 1"]),
        ({"num_steps": -1}, ["num_steps", ">= 0"]),
        ({"raft_fraction": 0.0}, ["raft_fraction", "(0, 1]"]),
        ({"learning_rate": 0.0}, ["learning_rate", "> 0"]),
    ],
)
def test_config_errors_name_field_and_allowed_values(values, pieces):
    with pytest.raises(ValueError) as info:
        FlowConfig(**values)
    for piece in pieces:
        assert piece in str(info.value), (piece, str(info.value))


def test_from_dict_refuses_unknown_key_by_name():
    with pytest.raises(ValueError) as info:
        FlowConfig.from_dict({"method": "adrpo", "beta_zero": 1.0, "lr": 1e-3})
    message = str(info.value)
    assert "['beta_zero', 'lr']" in message
    assert "beta0" in message and "learning_rate" in message  # the known fields are listed


def test_from_dict_round_trips():
    config = FlowConfig(method="raft", raft_fraction=0.5, report_to=["none"])
    assert FlowConfig.from_dict(config.to_dict()) == config


def test_clip_defaults_follow_beta0():
    config = FlowConfig(beta0=0.3)
    assert (config.adv_clip_min, config.adv_clip_max) == (-0.3, 0.3)


def test_clip_above_beta0_warns_for_adrpo_but_builds():
    with pytest.warns(UserWarning, match=r"adv_clip_max \(2.0\) > beta0 \(1.0\)"):
        config = FlowConfig(method="adrpo", adv_clip_min=-2.0, adv_clip_max=2.0)
    assert config.adv_clip_max == 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FlowConfig(method="orw_cfm_w2", adv_clip_max=2.0)  # the clip is unused outside ADRPO
        FlowConfig(method="adrpo", adv_clip_max=1.0)


# ----------------------------------------------------------------- settings that train nothing
def test_adrpo_with_zero_beta0_and_default_clip_is_refused():
    with pytest.raises(ConfigError, match=r"beta0 = 0 .* identically zero"):
        FlowConfig(method="adrpo", beta0=0.0)
    # an explicit clip makes the loss A·(‖v − u‖² − ‖v − v_ref‖²): unusual but not zero
    assert FlowConfig(method="adrpo", beta0=0.0, adv_clip_min=-1.0, adv_clip_max=0.0).beta0 == 0.0
    FlowConfig(method="orw_cfm_w2", beta0=0.0)  # beta0 is not used outside ADRPO


def test_adrpo_zero_beta0_default_clip_really_gives_zero_gradient(tmp_path):
    # What the refusal protects against: with beta0 = 0 and clip [0, 0] the loss is 0·‖v − u‖² + 0·‖v − v_ref‖².
    from adrpo.flow.methods import LOSSES, LossBatch

    config = FlowConfig(method="adrpo", beta0=0.0, adv_clip_min=-1.0, adv_clip_max=0.0)
    config.adv_clip_min = 0.0  # bypass the refusal
    v = torch.randn(4, 3, requires_grad=True)
    batch = LossBatch(v, torch.randn(4, 3), torch.randn(4, 3), torch.randn(4), torch.tensor([1.0, -1.0, 0.5, -0.5]), 2)
    LOSSES["adrpo"](batch, config).per_sample.mean().backward()
    assert torch.count_nonzero(v.grad) == 0


def test_group_of_one_with_group_baseline_is_refused_for_adrpo_and_warns_for_raft():
    with pytest.raises(ConfigError, match=r"group_size = 1 .* every advantage is zero"):
        FlowConfig(method="adrpo", group_size=1)
    assert FlowConfig(method="adrpo", group_size=1, advantage_baseline="batch").group_size == 1
    with pytest.warns(UserWarning, match="RAFT keeps every sample"):
        FlowConfig(method="raft", group_size=1)
    FlowConfig(method="orw_cfm_w2", group_size=1)  # ORW weights rewards, not advantages


def test_full_fine_tuning_of_bfloat16_weights_is_refused_with_the_fix(tmp_path):
    model = tiny_model().to(torch.bfloat16)
    with pytest.raises(ConfigError) as info:
        FlowTrainer(make_config(tmp_path), model, target_reward, PROMPTS)
    message = str(info.value)
    assert "lora_rank = 0" in message and "bfloat16" in message and "float32" in message and "lora_rank > 0" in message


def test_bfloat16_adamw_really_rounds_small_updates_away():
    # What the refusal protects against: lr 1e-4 on weights near 1 moves a bf16 weight not at all.
    weight = torch.nn.Parameter(torch.ones(8, dtype=torch.bfloat16))
    optimizer = torch.optim.AdamW([weight], lr=1e-4, weight_decay=0.0)
    for _ in range(10):
        weight.grad = torch.ones_like(weight)
        optimizer.step()
    assert torch.equal(weight.detach(), torch.ones(8, dtype=torch.bfloat16))


# ----------------------------------------------------------------- trainer inputs
def test_resume_from_missing_path_names_it(tmp_path):
    trainer = FlowTrainer(make_config(tmp_path), tiny_model(), target_reward, PROMPTS)
    with pytest.raises(ConfigError, match="/nonexistent/step-00000003"):
        trainer.train(resume_from_checkpoint="/nonexistent/step-00000003")


def test_empty_train_prompts_are_refused(tmp_path):
    with pytest.raises(ValueError, match="train_prompts is empty"):
        FlowTrainer(make_config(tmp_path), tiny_model(), target_reward, [])


def test_prompt_naming_two_words_of_one_factor_is_refused():
    model = tiny_model()
    assert model.encode_prompts(["a x", "b", "y", "something else"]).tolist() == [[0, 0], [1, 2], [2, 1], [2, 2]]
    with pytest.raises(ValueError, match=r"prompt 'a b x' names 2 words of factor 0: \['a', 'b'\]"):
        model.encode_prompts(["a x", "a b x"])


def test_bad_train_prompt_fails_the_step_naming_it(tmp_path):
    trainer = FlowTrainer(make_config(tmp_path, prompts_per_step=1), tiny_model(), target_reward, ["a x y"])
    with pytest.raises(ValueError, match="'a x y'"):
        trainer.step()


def test_digits_prompt_ids_refuse_unknown_prompt_by_name():
    assert prompt_ids(["a bold zero", "a thin nine"]).tolist() == [0, len(DIGIT_PROMPTS) - 1]
    with pytest.raises(ValueError, match="prompt 'a bold ten' is not a digits prompt"):
        prompt_ids(["a bold seven", "a bold ten"])


def test_digits_reward_refuses_wrong_sample_shape():
    torch.manual_seed(0)
    reward = DigitsReward(mlp([64, 20]))
    out = reward(torch.zeros(3, 64), ["a bold seven"] * 3)
    assert out.shape == (3,) and ((out >= 0) & (out <= 1)).all()
    with pytest.raises(ValueError, match=r"shape \(N, 64\), got \(3, 32\)"):
        reward(torch.zeros(3, 32), ["a bold seven"] * 3)
    with pytest.raises(ValueError, match=r"got \(3, 8, 8\)"):
        reward(torch.zeros(3, 8, 8), ["a bold seven"] * 3)
    with pytest.raises(ValueError, match="temperature"):
        DigitsReward(mlp([64, 20]), temperature=0.0)


def test_config_converts_yaml_text_numbers_and_refuses_wrong_types_by_field(tmp_path):
    config = FlowConfig(learning_rate="1e-3", beta0=2, num_steps=5.0, report_to="none", output_dir=str(tmp_path))
    assert config.learning_rate == 1e-3 and isinstance(config.beta0, float) and config.beta0 == 2.0
    assert config.num_steps == 5 and isinstance(config.num_steps, int) and config.report_to == ["none"]
    for field, value in [("beta0", "strong"), ("num_steps", 2.5), ("lora_rank", True), ("orw_normalize", "yes"),
                         ("method", 3), ("report_to", [1])]:
        with pytest.raises(ValueError, match=rf"^{field} must be "):
            FlowConfig(**{field: value})


@pytest.mark.parametrize("task", ["digits", "text_to_image"])
def test_one_eval_sample_is_refused_before_anything_loads(task, tmp_path):
    from adrpo.tasks import build_task

    args = {"eval_samples": 1, "cache": str(tmp_path / "nothing")} if task == "digits" else {
        "pipeline": str(tmp_path / "no-pipeline"), "reward": {"type": "clip_score", "model": "x"}, "prompts": ["a"], "eval_samples": 1}
    with pytest.raises(ConfigError, match=r"task_args.eval_samples must be an int >= 2.*got 1"):
        build_task(task, args, seed=0)
    assert not (tmp_path / "nothing").exists()  # refused before pretraining into the cache
