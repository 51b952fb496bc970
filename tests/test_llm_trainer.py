"""ADRPOConfig validation, PerSampleBeta arithmetic (every way to write the product, and the refusal of
a KL that is not per-completion), and ADRPOTrainer end to end on tiny Qwen2 and Llama models:
parameters move, the reward goes up, the coefficient diagnostics are logged and lie in
[β0 − A_max, β0 − A_min] (their min and max over the whole logging interval), and TRL's z-scored
advantages saturate the ±β0 clip (the note in adrpo/llm/config.py) while ``adv_coef_scale=beta``
keeps it graded."""

from __future__ import annotations

import statistics
import warnings

import pytest
import torch
from datasets import Dataset

from adrpo.core.coefficient import adaptive_coefficient
from adrpo.llm.config import ADRPOConfig
from adrpo.llm.tiny import char_tokenizer, save_model_and_tokenizer, tiny_causal_lm
from adrpo.llm.trainer import ADRPOTrainer, PerSampleBeta
from adrpo.rewards.base import RewardError
from adrpo.rewards.text import checked

CHARS = list("0123456789+=")
PROMPTS = ["1+2=", "3+4=", "5+1=", "2+2="]
STEPS = 16


def cpu_args(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path / "out"), bf16=False, gradient_checkpointing=False, use_cpu=True, report_to="none",
        save_strategy="no", disable_tqdm=True,
    )
    return {**values, **overrides}


def config(tmp_path, **overrides) -> ADRPOConfig:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return ADRPOConfig(**cpu_args(tmp_path, **overrides))


# --- ADRPOConfig ----------------------------------------------------------------------------


def test_config_defaults_are_the_papers(tmp_path):
    args = config(tmp_path)
    assert args.beta == 0.04
    assert (args.adv_clip_min, args.adv_clip_max) == (-0.04, 0.04)
    assert args.adv_coef_scale == 1.0
    scaled = config(tmp_path, beta=0.1)
    assert (scaled.adv_clip_min, scaled.adv_clip_max) == (-0.1, 0.1)  # the clip follows beta


def test_config_clip_range_must_be_ordered(tmp_path):
    with pytest.raises(ValueError) as info:
        config(tmp_path, adv_clip_min=0.02, adv_clip_max=0.01)
    assert "adv_clip_min (0.02)" in str(info.value) and "adv_clip_max (0.01)" in str(info.value)


def test_config_refuses_negative_beta_and_scale(tmp_path):
    with pytest.raises(ValueError, match=r"beta .* >= 0, got -0\.1"):
        config(tmp_path, beta=-0.1, adv_clip_min=0.0, adv_clip_max=0.0)
    with pytest.raises(ValueError, match=r"adv_coef_scale must be >= 0, got -1"):
        config(tmp_path, adv_coef_scale=-1.0)


def test_config_zero_beta_needs_zero_clip(tmp_path):
    plain = config(tmp_path, beta=0.0)  # defaults ±0 collapse to plain GRPO
    assert plain.adv_clip_min == 0 and plain.adv_clip_max == 0
    with pytest.raises(ValueError) as info:
        config(tmp_path, beta=0.0, adv_clip_min=-0.1, adv_clip_max=0.0)
    assert "set beta > 0" in str(info.value) and "adv_clip_min = adv_clip_max = 0" in str(info.value)


def test_config_warns_when_the_coefficient_can_go_negative(tmp_path):
    with pytest.warns(UserWarning, match=r"adv_clip_max \(0\.1\) > beta \(0\.04\)"):
        config(tmp_path, adv_clip_max=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        config(tmp_path, adv_clip_max=0.04)  # the edge itself does not warn


# --- PerSampleBeta --------------------------------------------------------------------------


def test_per_sample_beta_is_beta0_for_floats_and_per_row_for_tensors():
    coefficient = torch.tensor([[0.0], [0.04], [0.08]])  # (B, 1)
    beta = PerSampleBeta(0.04, coefficient)
    assert float(beta) == 0.04 and beta == 0.04
    assert (beta != 0.0) is True  # TRL's "is there a KL term" test
    kl = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # (B, T)
    # row b is scaled by coefficient[b]: [0, 0], [0.12, 0.16], [0.40, 0.48]
    expected = torch.tensor([[0.0, 0.0], [0.12, 0.16], [0.40, 0.48]])
    torch.testing.assert_close(beta * kl, expected)  # the order TRL 1.16 writes: self.beta * per_token_kl
    assert (beta * kl).dtype == kl.dtype
    assert (beta * kl.double()).dtype == torch.float64  # follows the KL's dtype
    product = beta * 2.0
    assert type(product) is float and product == pytest.approx(0.08)
    assert 3 * beta == pytest.approx(0.12)


def test_per_sample_beta_tensor_on_the_left():
    beta = PerSampleBeta(0.04, torch.tensor([[0.0], [0.08]]))  # (B, 1)
    kl = torch.ones(2, 3)  # (B, T)
    torch.testing.assert_close(kl * beta, torch.tensor([[0.0] * 3, [0.08] * 3]))


def per_sample_products(beta, kl):
    """Every way to write beta times kl that PerSampleBeta must scale row by row."""
    in_place = kl.clone()
    in_place *= beta
    return {
        "beta * kl": beta * kl, "kl * beta": kl * beta, "torch.mul(beta, kl)": torch.mul(beta, kl),
        "torch.mul(kl, beta)": torch.mul(kl, beta), "kl.mul(beta)": kl.mul(beta), "kl *= beta": in_place,
        "kl.clone().mul_(beta)": kl.clone().mul_(beta),
    }


def test_per_sample_beta_every_product_form_is_per_row():
    beta = PerSampleBeta(0.04, torch.tensor([[0.01], [0.02], [0.03]]))  # (B, 1), B = 3
    kl = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # (B, T)
    # row b times coefficient b: [0.01, 0.02], [0.06, 0.08], [0.15, 0.18]
    expected = torch.tensor([[0.01, 0.02], [0.06, 0.08], [0.15, 0.18]])
    for form, product in per_sample_products(beta, kl).items():
        torch.testing.assert_close(product, expected, msg=form)
    # a sequence-level (B, 1) KL and a (B,) one are per-completion too: [2, 3, 4] -> [0.02, 0.06, 0.12]
    torch.testing.assert_close(torch.mul(beta, torch.tensor([[2.0], [3.0], [4.0]])), torch.tensor([[0.02], [0.06], [0.12]]))
    torch.testing.assert_close(torch.mul(beta, torch.tensor([2.0, 3.0, 4.0])), torch.tensor([0.02, 0.06, 0.12]))


@pytest.mark.parametrize("shape", [(), (2,), (1,), (1, 2), (4, 2)])
def test_per_sample_beta_refuses_a_kl_that_is_not_per_completion(shape):
    beta = PerSampleBeta(0.04, torch.tensor([[0.01], [0.02], [0.03]]))  # B = 3
    reduced = torch.ones(shape)  # e.g. a KL already averaged over completions or tokens
    for write in (lambda: beta * reduced, lambda: reduced * beta, lambda: torch.mul(beta, reduced),
                  lambda: torch.mul(reduced, beta), lambda: reduced.clone().mul_(beta)):
        with pytest.raises(ValueError) as info:
            write()
        message = str(info.value)
        assert "TRL's KL term is no longer per-completion" in message
        assert f"shape {shape}" in message and "shape (3, 1)" in message  # what it got and what it holds


def test_per_sample_beta_refuses_other_torch_uses():
    beta = PerSampleBeta(0.04, torch.tensor([[0.01], [0.02]]))
    kl = torch.ones(2, 3)
    for name, write in [("add", lambda: kl + beta), ("add", lambda: torch.add(kl, beta)), ("div", lambda: kl / beta),
                        ("clamp", lambda: kl.clamp(max=beta))]:
        with pytest.raises(NotImplementedError, match=rf"torch's {name} cannot use it per sample"):
            write()
    assert beta + 1.0 == pytest.approx(1.04)  # plain Python numbers still see the float beta0


# --- end to end -----------------------------------------------------------------------------


def digit_sum(completions, **kwargs):
    """Sum of the digits in the completion: easy to raise (write 9s) and nearly always varied in a group."""
    return [float(sum(int(ch) for ch in c if ch.isdigit())) for c in completions]


@pytest.fixture(scope="module")
def model_paths(tmp_path_factory):
    tokenizer = char_tokenizer(CHARS)
    return {
        family: save_model_and_tokenizer(tiny_causal_lm(family, len(tokenizer), hidden=16, layers=1, heads=2), tokenizer,
                                         tmp_path_factory.mktemp(family))
        for family in ("qwen2", "llama")
    }


def build(path, args, reward=digit_sum):
    dataset = Dataset.from_list([{"prompt": p} for p in PROMPTS] * 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ADRPOTrainer(model=str(path), reward_funcs=reward, args=args, train_dataset=dataset)


RUNS: dict[tuple[str, float], dict] = {}


def trained(family, scale, model_paths, tmp_path_factory):
    """Train once per (family, adv_coef_scale); return the initial/final params and the log."""
    key = (family, scale)
    if key not in RUNS:
        args = config(
            tmp_path_factory.mktemp("run"), max_steps=STEPS, learning_rate=1e-2, per_device_train_batch_size=8,
            num_generations=4, max_completion_length=4, logging_steps=1, seed=0, adv_coef_scale=scale,
        )
        trainer = build(model_paths[family], args)
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        trainer.train()
        after = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        logs = [row for row in trainer.state.log_history if "reward" in row]
        RUNS[key] = {"before": before, "after": after, "logs": logs, "args": args}
    return RUNS[key]


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_adrpo_trains_and_logs_the_coefficient(family, model_paths, tmp_path_factory):
    run = trained(family, 1.0, model_paths, tmp_path_factory)
    changed = [n for n in run["before"] if not torch.equal(run["before"][n], run["after"][n])]
    assert len(changed) == len(run["before"])  # every parameter moved

    logs = run["logs"]
    assert len(logs) == STEPS
    for key in ("adrpo/coef_mean", "adrpo/coef_min", "adrpo/coef_max", "adrpo/frac_clipped", "adrpo/frac_negative",
                "kl", "entropy", "reward"):
        assert all(key in row for row in logs), key
    beta, a_min, a_max = run["args"].beta, run["args"].adv_clip_min, run["args"].adv_clip_max
    for row in logs:
        assert beta - a_max - 1e-6 <= row["adrpo/coef_min"] <= row["adrpo/coef_mean"] <= row["adrpo/coef_max"] <= beta - a_min + 1e-6
        assert row["adrpo/frac_negative"] == 0.0  # a_max = beta: the coefficient stops at 0
    # z-scored advantages (scale_rewards="group") are ~±1, far outside ±0.04: the clip saturates
    assert statistics.fmean(row["adrpo/frac_clipped"] for row in logs) >= 0.5
    assert logs[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference before the first update
    assert max(row["kl"] for row in logs[1:]) > 0
    rewards = [row["reward"] for row in logs]
    # seed 0, one thread: about 9.8 over the first four steps, 15-16 over the last four
    assert statistics.fmean(rewards[-4:]) > statistics.fmean(rewards[:4]) + 2.0


def test_adv_coef_scale_beta_keeps_the_coefficient_graded(model_paths, tmp_path_factory):
    saturated = trained("qwen2", 1.0, model_paths, tmp_path_factory)["logs"]
    graded_run = trained("qwen2", 0.04, model_paths, tmp_path_factory)
    graded = graded_run["logs"]
    frac = lambda logs: statistics.fmean(row["adrpo/frac_clipped"] for row in logs)  # noqa: E731
    assert frac(graded) < 0.5 <= frac(saturated)
    for row in graded:
        assert 0.0 - 1e-6 <= row["adrpo/coef_min"] <= row["adrpo/coef_max"] <= 0.08 + 1e-6


def test_logged_coef_min_and_max_are_the_extremes_of_the_logging_interval(model_paths, tmp_path, monkeypatch):
    """TRL averages every metric over the logging interval; the coefficient's min and max must instead be
    the extremes over all its micro-batches (here 2 accumulation steps x 2 optimizer steps = 4 per log)."""
    import adrpo.llm.trainer as trainer_module

    seen: list[torch.Tensor] = []  # the (B,) coefficient of every micro-batch, in order

    def recording(*args, **kwargs):
        out = adaptive_coefficient(*args, **kwargs)
        seen.append(out[0].detach().clone())
        return out

    monkeypatch.setattr(trainer_module, "adaptive_coefficient", recording)
    args = config(tmp_path, max_steps=4, logging_steps=2, gradient_accumulation_steps=2, per_device_train_batch_size=4,
                  num_generations=4, max_completion_length=4, learning_rate=1e-2, seed=0, adv_coef_scale=0.04)
    trainer = build(model_paths["qwen2"], args)
    trainer.train()
    logs = [row for row in trainer.state.log_history if "adrpo/coef_min" in row]
    assert len(logs) == 2 and len(seen) == 8
    per_log = [seen[i:i + 4] for i in (0, 4)]
    for row, batches in zip(logs, per_log):
        every = torch.cat(batches)
        assert row["adrpo/coef_min"] == pytest.approx(every.min().item(), abs=1e-7)
        assert row["adrpo/coef_max"] == pytest.approx(every.max().item(), abs=1e-7)
        assert row["adrpo/coef_mean"] == pytest.approx(every.mean().item(), abs=1e-7)  # equal micro-batches: mean of means
    # the test has teeth: averaging the per-micro-batch extremes (what TRL's log does) gives other numbers
    mean_of_mins = [statistics.fmean(b.min().item() for b in batches) for batches in per_log]
    assert any(abs(m - row["adrpo/coef_min"]) > 1e-3 for m, row in zip(mean_of_mins, logs))


def nan_reward(completions, **kwargs):
    return [float("nan")] * len(completions)


def test_nan_reward_stops_training_with_a_named_error(model_paths, tmp_path):
    args = config(tmp_path, max_steps=1, per_device_train_batch_size=4, num_generations=4, max_completion_length=2)
    trainer = build(model_paths["qwen2"], args, reward=checked(nan_reward))
    with pytest.raises(RewardError, match=r"'nan_reward': sample 0 \(prompt '\d\+\d='\) got nan"):
        trainer.train()
