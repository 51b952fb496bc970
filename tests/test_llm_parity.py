"""ADRPOTrainer against stock TRL GRPOTrainer: with the coefficient's clip range collapsed to a
constant c, ADRPO's loss and gradients equal GRPO's with beta = β0 − c, for every loss_type,
with a PEFT reference, and with num_iterations = 2; with a coefficient that differs per completion,
they equal GRPO run on each completion alone with beta set to that completion's coefficient. These
guard the override of TRL's private ``_compute_loss``."""

from __future__ import annotations

import warnings

import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from adrpo.llm.config import ADRPOConfig
from adrpo.llm.tiny import char_tokenizer, save_model_and_tokenizer, tiny_causal_lm
from adrpo.llm.trainer import ADRPOTrainer

LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")
BETA0 = 0.04
PROMPTS = ["1+2=", "3+4="]


def length_reward(completions, **kwargs):
    return [float(len(c)) for c in completions]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    tokenizer = char_tokenizer(list("0123456789+="))
    return save_model_and_tokenizer(tiny_causal_lm("qwen2", len(tokenizer)), tokenizer, tmp_path_factory.mktemp("tiny"))


def common_args(tmp_path, **overrides):
    return dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, num_generations=4, max_completion_length=6,
        bf16=False, gradient_checkpointing=False, report_to="none", use_cpu=True, save_strategy="no", seed=0,
        temperature=1.0, **overrides,
    )


def build(trainer_cls, args, tiny_path, peft_config=None):
    torch.manual_seed(0)  # identical LoRA initialisation in both trainers
    dataset = Dataset.from_list([{"prompt": p} for p in PROMPTS] * 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return trainer_cls(model=str(tiny_path), reward_funcs=length_reward, args=args, train_dataset=dataset, peft_config=peft_config)


def perturb(model):
    """Move the trained weights away from the reference, identically in every model, so the KL and its gradient are not zero."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in (p for p in model.parameters() if p.requires_grad):
            param.add_(0.05 * torch.randn(param.shape, generator=generator))


def loss_and_grads(trainer, inputs):
    trainer.current_gradient_accumulation_steps = 1  # set by the HF training loop, which these tests skip
    trainer.model.train()
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def generation(trainer):
    trainer.model.train()
    torch.manual_seed(2)
    return trainer._generate_and_score_completions([{"prompt": p} for p in PROMPTS for _ in range(4)])


def assert_parity(stock, adrpo, inputs):
    perturb(stock.model)
    perturb(adrpo.model)
    loss_s, grads_s = loss_and_grads(stock, inputs)
    loss_a, grads_a = loss_and_grads(adrpo, inputs)
    torch.testing.assert_close(loss_a, loss_s, rtol=1e-6, atol=1e-7)
    assert grads_s.keys() == grads_a.keys()
    for name in grads_s:
        torch.testing.assert_close(grads_a[name], grads_s[name], rtol=1e-5, atol=1e-7, msg=name)
    return loss_s


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("c", [0.01, -0.03])
def test_constant_advantage_equals_grpo_with_beta0_minus_c(tmp_path, tiny_path, loss_type, c):
    stock = build(GRPOTrainer, GRPOConfig(**common_args(tmp_path, beta=BETA0 - c, loss_type=loss_type)), tiny_path)
    adrpo = build(ADRPOTrainer, ADRPOConfig(**common_args(tmp_path, beta=BETA0, adv_clip_min=c, adv_clip_max=c, loss_type=loss_type)), tiny_path)
    inputs = generation(stock)
    assert inputs["advantages"].abs().max() > 0  # the advantages vary; only the clip makes them constant
    assert_parity(stock, adrpo, inputs)


def test_zero_beta_and_zero_clip_equals_grpo_without_kl(tmp_path, tiny_path):
    stock = build(GRPOTrainer, GRPOConfig(**common_args(tmp_path, beta=0.0)), tiny_path)
    adrpo = build(ADRPOTrainer, ADRPOConfig(**common_args(tmp_path, beta=0.0, adv_clip_min=0.0, adv_clip_max=0.0)), tiny_path)
    assert adrpo.ref_model is None
    assert_parity(stock, adrpo, generation(stock))


def test_peft_reference_parity(tmp_path, tiny_path):
    from peft import LoraConfig

    lora = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    c = 0.02
    stock = build(GRPOTrainer, GRPOConfig(**common_args(tmp_path, beta=BETA0 - c)), tiny_path, LoraConfig(**lora))
    adrpo = build(ADRPOTrainer, ADRPOConfig(**common_args(tmp_path, beta=BETA0, adv_clip_min=c, adv_clip_max=c)), tiny_path, LoraConfig(**lora))
    assert adrpo.ref_model is None  # the reference is the base with the adapter disabled
    inputs = generation(stock)
    assert "ref_per_token_logps" in inputs
    assert_parity(stock, adrpo, inputs)


def test_num_iterations_two_parity(tmp_path, tiny_path):
    c = -0.01
    stock = build(GRPOTrainer, GRPOConfig(**common_args(tmp_path, beta=BETA0 - c, num_iterations=2)), tiny_path)
    adrpo = build(ADRPOTrainer, ADRPOConfig(**common_args(tmp_path, beta=BETA0, adv_clip_min=c, adv_clip_max=c, num_iterations=2)), tiny_path)
    inputs = generation(stock)
    assert inputs.get("old_per_token_logps") is not None  # the importance ratio is live after perturbing
    assert_parity(stock, adrpo, inputs)


def test_adaptive_coefficient_differs_from_fixed_beta(tmp_path, tiny_path):
    """The paper's rule (clip ±β0) is not stock GRPO at β0: the parity tests above are not vacuous."""
    stock = build(GRPOTrainer, GRPOConfig(**common_args(tmp_path, beta=BETA0)), tiny_path)
    adrpo = build(ADRPOTrainer, ADRPOConfig(**common_args(tmp_path)), tiny_path)
    inputs = generation(stock)
    perturb(stock.model)
    perturb(adrpo.model)
    _, grads_s = loss_and_grads(stock, inputs)
    _, grads_a = loss_and_grads(adrpo, inputs)
    assert any(not torch.allclose(grads_a[n], grads_s[n], rtol=1e-4, atol=1e-6) for n in grads_s)


# How each loss_type's aggregate of B rows splits into the losses of single rows (every aggregate is linear
# in the rows): the mean of row means (grpo, sapo, luspo) or of row sums over B·max_completion_length
# (dr_grpo) weighs each single-row loss 1/B; bnpo's token mean weighs it by its share of the tokens; dapo,
# cispo and vespo divide by the batch's num_items_in_batch, which the single rows keep: weight 1.
ROW_WEIGHTS = {
    **dict.fromkeys(("grpo", "sapo", "luspo", "dr_grpo"), lambda mask: torch.full((mask.shape[0],), 1 / mask.shape[0])),
    "bnpo": lambda mask: mask.sum(1) / mask.sum(),
    **dict.fromkeys(("dapo", "cispo", "vespo"), lambda mask: torch.ones(mask.shape[0])),
}


def single_row(inputs, i):
    n = inputs["advantages"].shape[0]
    return {k: v[i:i + 1] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n else v for k, v in inputs.items()}


def row_by_row(stock, inputs, betas, weights):
    """Σ_i weight_i · (stock GRPO on completion i alone with beta = betas[i]): loss and gradients."""
    loss, grads = 0.0, {}
    for i, (beta, weight) in enumerate(zip(betas.tolist(), weights.tolist())):
        stock.beta = beta
        row_loss, row_grads = loss_and_grads(stock, single_row(inputs, i))
        loss = loss + weight * row_loss
        grads = {n: grads.get(n, 0.0) + weight * g for n, g in row_grads.items()}
    return loss, grads


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_each_completion_gets_its_own_coefficient(tmp_path, tiny_path, loss_type):
    """Distinct advantages and distinct per-row KLs: ADRPO equals stock GRPO run row by row with each row's
    own beta = β0 − clip(A_i), and differs from the same rows given the coefficients in reverse order."""
    stock = build(GRPOTrainer, GRPOConfig(**common_args(tmp_path, beta=BETA0, loss_type=loss_type)), tiny_path)
    adrpo = build(ADRPOTrainer, ADRPOConfig(**common_args(tmp_path, beta=BETA0, loss_type=loss_type)), tiny_path)  # clip ±β0
    inputs = generation(stock)
    inputs["advantages"] = torch.tensor([-0.06, -0.03, -0.015, -0.005, 0.01, 0.025, 0.035, 0.07])  # (B,), 2 beyond ±0.04
    # β0 − clip(A, −0.04, 0.04), one value per row:
    coefficient = torch.tensor([0.08, 0.07, 0.055, 0.045, 0.03, 0.015, 0.005, 0.0])
    weights = ROW_WEIGHTS[loss_type](inputs["completion_mask"].float())
    perturb(stock.model)
    perturb(adrpo.model)

    loss_a, grads_a = loss_and_grads(adrpo, inputs)
    loss_r, grads_r = row_by_row(stock, inputs, coefficient, weights)
    loss_x, _ = row_by_row(stock, inputs, coefficient.flip(0), weights)  # the coefficients on the wrong rows

    torch.testing.assert_close(loss_a, loss_r, rtol=1e-5, atol=1e-7)
    for name in grads_r:
        torch.testing.assert_close(grads_a[name], grads_r[name], rtol=1e-4, atol=1e-7, msg=name)
    assert abs(loss_x - loss_r) > 100 * (1e-7 + 1e-5 * abs(loss_r))  # the check above can tell the rows apart
