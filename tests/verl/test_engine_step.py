"""The deepest verl training step that runs on a CPU: verl's FSDP engine ``train_batch`` on a tiny Qwen2.

verl's engine step: zero the gradients, split the (nested, no-padding) batch into micro-batches, run the
model, turn logits into log-probs (``prepare_model_inputs`` / ``prepare_model_outputs``), call the actor
loss the worker hands it (``partial(ppo_loss, config=actor_config)``, as ``ActorRolloutRefWorker`` does),
backward, clip and step. The advantages come from verl's own GRPO estimator.

Where it stops on a CPU (verl 0.9.1): verl has no CPU platform (``get_platform()`` falls back to
'nvidia'), so ``EngineRegistry.new`` and ``FSDPEngine.__init__`` (``_init_device_mesh`` calls
``torch.cuda.set_device``) cannot run, and the Ray worker module (``verl.workers.engine_workers``) needs
the rollout server's packages (uvicorn). The test therefore builds ``FSDPEngineWithLMHead`` without its
``__init__`` (a plain module, no FSDP wrapping, no device mesh), points the engine module's two device
look-ups at the CPU, and runs everything from ``train_batch`` down unchanged on a one-process gloo group.
"""

from __future__ import annotations

import pytest

pytest.importorskip("verl.workers", reason="verl is not installed here: tests/verl run in their own environment, make verl-test")

import copy  # noqa: E402
from functools import partial  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage, kl_penalty  # noqa: E402
from verl.utils import tensordict_utils as tu  # noqa: E402
from verl.utils import torch_functional as verl_F  # noqa: E402
from verl.utils.metric import Metric  # noqa: E402
from verl.workers.config import FSDPEngineConfig, FSDPOptimizerConfig  # noqa: E402
from verl.workers.engine.fsdp import transformer_impl  # noqa: E402
from verl.workers.utils import losses  # noqa: E402

PROMPTS = [[5, 9, 2], [7, 3], [11, 4, 6], [8, 1]]
RESPONSES = [[12, 20, 3, 17], [25, 2], [9, 14, 30], [4, 4, 19, 21]]  # 13 response tokens
GROUPS = np.array(["a", "a", "b", "b"])  # two prompts, G = 2 samples each
VOCAB = 32


@pytest.fixture(scope="module", autouse=True)
def cpu_process_group(tmp_path_factory):
    """One-process gloo group (the engine all-reduces token counts over it); verl's device look-ups -> CPU."""
    store = tmp_path_factory.mktemp("pg") / "store"
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(transformer_impl, "get_device_id", lambda: "cpu")
        patch.setattr(transformer_impl, "get_device_name", lambda: "cpu")
        yield
    torch.distributed.destroy_process_group()


def tiny_policy_and_reference() -> tuple[Qwen2ForCausalLM, Qwen2ForCausalLM]:
    """A 1-layer Qwen2 (random weights, seed 0) and a reference 0.05·N(0, 1) away from it, so KL > 0."""
    config = Qwen2Config(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=32, tie_word_embeddings=False, attn_implementation="eager",
    )  # fmt: skip
    torch.manual_seed(0)
    policy = Qwen2ForCausalLM(config)
    reference = copy.deepcopy(policy)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return policy, reference


def response_log_probs(model: Qwen2ForCausalLM) -> list[torch.Tensor]:
    """Each response's per-token log-probs (r_b,) under ``model``, one unpadded sequence at a time."""
    rows = []
    with torch.no_grad():
        for prompt, response in zip(PROMPTS, RESPONSES):
            logits = model(input_ids=torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1]  # (r_b, V)
            rows.append(verl_F.logprobs_from_logits(logits, torch.tensor(response)))
    return rows


def rollout_batch(policy, reference, scores: list[float]):
    """The actor-update batch as verl's v1 trainer stores it: nested (jagged) rows, GRPO advantages."""
    lengths = torch.tensor([len(r) for r in RESPONSES])
    width = int(lengths.max())
    mask = (torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)).float()  # (B, R)
    token_scores = torch.zeros(len(scores), width)
    token_scores[torch.arange(len(scores)), lengths - 1] = torch.tensor(scores)
    advantages, _ = compute_grpo_outcome_advantage(token_scores, mask, GROUPS)  # (B, R), constant per row

    def nested(rows):
        return torch.nested.as_nested_tensor([torch.as_tensor(r) for r in rows], layout=torch.jagged)

    old, ref = response_log_probs(policy), response_log_probs(reference)
    data = tu.get_tensordict(
        {
            "input_ids": nested([p + r for p, r in zip(PROMPTS, RESPONSES)]),
            "position_ids": nested([list(range(len(p) + len(r))) for p, r in zip(PROMPTS, RESPONSES)]),
            "prompts": nested(PROMPTS),
            "responses": nested(RESPONSES),
            "response_mask": nested([[1] * len(r) for r in RESPONSES]),
            "loss_mask": nested([[1] * len(r) for r in RESPONSES]),
            "old_log_probs": nested(old),
            "ref_log_prob": nested(ref),
            "advantages": nested([advantages[b, : len(r)] for b, r in enumerate(RESPONSES)]),
        },
        dict(global_batch_size=4, use_dynamic_bsz=False, micro_batch_size_per_gpu=2, use_remove_padding=False, temperature=1.0),
    )
    return data, advantages[:, 0], old, ref


def engine_for(policy: Qwen2ForCausalLM) -> transformer_impl.FSDPEngineWithLMHead:
    """verl's FSDP language-model engine around a plain module, its state set as __init__/initialize would."""
    engine = transformer_impl.FSDPEngineWithLMHead.__new__(transformer_impl.FSDPEngineWithLMHead)
    engine.module = policy
    engine.engine_config = FSDPEngineConfig(strategy="fsdp2", use_torch_compile=False)
    engine.optimizer_config = FSDPOptimizerConfig(lr=1e-2, clip_grad=1.0)
    engine.optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    engine.ulysses_sequence_parallel_size, engine.use_ulysses_sp, engine.ulysses_device_mesh = 1, False, None
    engine.pad_to_length, engine.scaler, engine._qat_enabled = False, None, False
    engine._autocast_dtype = torch.float32
    engine.compute_entropy_from_logits = verl_F.entropy_from_logits
    return engine


def train_step(config, scores, loss_fn=None):
    """One verl engine step; returns its output, the row advantages, the batch's log-probs and the new weights."""
    policy, reference = tiny_policy_and_reference()
    data, row_advantages, old, ref = rollout_batch(policy, reference, scores)
    output = engine_for(policy).train_batch(data, loss_function=partial(loss_fn or losses.ppo_loss, config=config))
    return output, row_advantages, old, ref, torch.cat([p.detach().flatten() for p in policy.parameters()])


def reduced(output, key):
    """A metric as verl's worker reduces it over micro-batches (and data-parallel ranks)."""
    return Metric.aggregate_dp([output["metrics"][key]])


def test_zero_advantage_step_is_stock_verl_bitwise(actor_config):
    """Equal scores in each group: GRPO gives A = 0, and the whole step — losses, gradient norm, new
    weights — is stock verl's at kl_loss_coef = β0, to the bit."""
    from adrpo.integrations import verl as plugin

    scores = [1.0, 1.0, 0.0, 0.0]
    output, advantages, *_, weights = train_step(actor_config(), scores)
    stock, _, _, _, stock_weights = train_step(actor_config(adrpo=None), scores, loss_fn=plugin._STOCK_PPO_LOSS)
    assert torch.equal(advantages, torch.zeros(4))
    assert output["loss"] == stock["loss"]
    assert output["metrics"]["grad_norm"] == stock["metrics"]["grad_norm"] > 0
    assert torch.equal(weights, stock_weights)


def test_adrpo_step_on_grpo_advantages(actor_config):
    """Scores [1, 0 | 0, 1]: verl's GRPO advantages ±1/√2, clipped to ±β0 = ±0.04, give coefficients
    [0, 0.08, 0.08, 0]. The step's KL term is Σ_b c_b Σ_t KL_bt / 13 tokens, the diagnostics reach verl's
    metrics, and the weights move differently from fixed-β verl."""
    scores = [1.0, 0.0, 0.0, 1.0]
    output, advantages, old, ref, weights = train_step(actor_config(), scores)
    no_kl, *_ = train_step(actor_config(adrpo=None, use_kl_loss=False), scores)
    fixed, *_, fixed_weights = train_step(actor_config(adrpo=None), scores)
    initial = torch.cat([p.detach().flatten() for p in tiny_policy_and_reference()[0].parameters()])

    torch.testing.assert_close(advantages, torch.tensor([1.0, -1.0, -1.0, 1.0]) / 2**0.5, rtol=1e-4, atol=0)
    coefficients = [0.0, 0.08, 0.08, 0.0]
    # the policy is where old_log_probs were taken, so the step's per-token KL is KL(old, ref)
    row_kl = [kl_penalty(o, r, "low_var_kl").sum() for o, r in zip(old, ref)]
    expected = sum(c * k for c, k in zip(coefficients, row_kl)) / 13
    torch.testing.assert_close(torch.tensor(sum(output["loss"]) - sum(no_kl["loss"])), expected, rtol=1e-4, atol=1e-8)
    assert reduced(output, "kl_loss") == pytest.approx(float(sum(row_kl) / 13), rel=1e-4)  # unweighted, as verl's

    expected_metrics = {"coef_mean": 0.04, "coef_min": 0.0, "coef_max": 0.08, "frac_clipped": 1.0, "frac_negative": 0.0}
    for key, value in expected_metrics.items():
        assert reduced(output, f"adrpo/{key}") == pytest.approx(value), key
    assert not torch.equal(weights, initial)
    assert (weights - fixed_weights).abs().max() > 1e-6
    assert output["metrics"]["grad_norm"] != fixed["metrics"]["grad_norm"]
