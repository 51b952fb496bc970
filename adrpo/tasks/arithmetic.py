"""The arithmetic LLM miniature: a tiny causal LM the project pretrains itself, with headroom.

Task: prompts "a+b=" with a, b in [0, 30); a completion is the answer's digits and <eos>.
The reward is verifiable (:func:`adrpo.rewards.text.math_answer_reward`: 1 when the last
number equals a + b). Pretraining is deliberately noisy so the base model has headroom: a
character-level Qwen2 (~60k parameters) is trained by next-token prediction on sums whose
answer is replaced, with probability ``label_noise``, by a + b ± 1..3. Prompts are split into
train and held-out sets (by a fixed random permutation).

The evaluator samples G completions per held-out prompt with fixed seeds and reports
accuracy (the reward), the per-token KL to the reference (exact, over the vocabulary, on the
policy's own samples), the per-token entropy, and diversity = distinct completions / G. The
reference of :func:`evaluation_callback` is its own copy of the base model, which TRL's
``sync_ref_model`` never moves: with a moving reference this ``kl`` is still the drift from the
base (as the training rows' ``kl_base``), not the KL to TRL's current reference.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from adrpo.llm.tiny import char_tokenizer, save_model_and_tokenizer, tiny_causal_lm
from adrpo.settings import cache_root, settings_key

CHARS = list("0123456789+=")
CACHE_VERSION = 1


@dataclass(frozen=True)
class ArithmeticSettings:
    max_operand: int = 30
    held_out: int = 100
    label_noise: float = 0.5
    hidden: int = 64
    layers: int = 2
    steps: int = 1200
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0

    def key(self) -> str:
        return settings_key(self, CACHE_VERSION)


SETTINGS = ArithmeticSettings


def split_rows(settings: ArithmeticSettings) -> tuple[list[dict], list[dict]]:
    """(train, held_out) rows {"prompt": "a+b=", "answer": "a+b"}, disjoint, fixed order."""
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(settings.max_operand) for b in range(settings.max_operand)]
    random.Random(settings.seed).shuffle(rows)
    return rows[settings.held_out :], rows[: settings.held_out]


def pretrain(settings: ArithmeticSettings, path: Path) -> Path:
    """Noisy next-token pretraining of a tiny Qwen2 on the train prompts; saved to ``path``."""
    tokenizer = char_tokenizer(CHARS)
    model = tiny_causal_lm("qwen2", len(tokenizer), hidden=settings.hidden, layers=settings.layers, seed=settings.seed)
    train, _ = split_rows(settings)
    rng = random.Random(settings.seed + 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr)
    model.train()
    for _ in range(settings.steps):
        texts = []
        for row in rng.choices(train, k=settings.batch_size):
            answer = int(row["answer"])
            if rng.random() < settings.label_noise:
                answer += rng.choice([-3, -2, -1, 1, 2, 3])
            texts.append(row["prompt"] + str(max(answer, 0)) + tokenizer.eos_token)
        batch = tokenizer(texts, return_tensors="pt", padding=True)
        labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
        loss = model(**batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    tmp = path.with_name(path.name + ".tmp")
    save_model_and_tokenizer(model, tokenizer, tmp)
    os.replace(tmp, path)
    return path


def base_model_path(settings: ArithmeticSettings, *, cache: str | Path | None = None) -> Path:
    """The cached pretrained model folder (TRL loads it, and rebuilds the reference from it)."""
    path = (Path(cache) if cache else cache_root()) / "arithmetic" / f"model-{settings.key()}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        pretrain(settings, path)
    return path


def reward_funcs() -> list:
    from adrpo.rewards.text import checked, math_answer_reward

    return [checked(math_answer_reward)]


@torch.no_grad()
def evaluate_policy(model, reference, tokenizer, rows: list[dict], *, group: int, max_new_tokens: int, seed: int) -> dict[str, float]:
    """Held-out accuracy, KL(π‖π_ref) and entropy per token, and diversity of G samples per prompt.

    The G samples of each of the ``rows`` are drawn with ``seed``: the metrics are a function of
    (policy, rows, seed), and torch's global random state is the same after the call as before
    (python's ``random`` and numpy are not used).
    """
    from adrpo.rewards.text import math_answer_reward

    was_training = model.training
    model.eval()
    prompts = [row["prompt"] for row in rows for _ in range(group)]
    answers = [row["answer"] for row in rows for _ in range(group)]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left").to(model.device)
    # generate samples from torch's global generators, which the trainer's own sampling shares: seed
    # them for this evaluation only and restore them after, so that evaluating does not move training.
    # The CPU state is always forked; so is every device of the accelerator type (manual_seed seeds all).
    accelerators = range(torch.accelerator.device_count()) if torch.accelerator.is_available() else []
    with torch.random.fork_rng(devices=accelerators):
        torch.manual_seed(seed)
        out = model.generate(**batch, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    completion_ids = out[:, batch.input_ids.shape[1]:]  # (N, T)
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    # tokens up to and including the first eos
    is_eos = completion_ids == tokenizer.eos_token_id
    after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    mask = (~after_eos).float()  # (N, T)
    attention = torch.cat([batch.attention_mask, mask.long()], dim=1)
    logits = model(input_ids=out, attention_mask=attention).logits[:, batch.input_ids.shape[1] - 1 : -1]  # (N, T, V)
    ref_logits = reference(input_ids=out, attention_mask=attention).logits[:, batch.input_ids.shape[1] - 1 : -1]
    logp, ref_logp = logits.log_softmax(-1), ref_logits.log_softmax(-1)
    kl = (logp.exp() * (logp - ref_logp)).sum(-1)  # (N, T)
    entropy = -(logp.exp() * logp).sum(-1)
    tokens = mask.sum().clamp_min(1)
    distinct = [len(set(texts[i : i + group])) / group for i in range(0, len(texts), group)]
    rewards = math_answer_reward(prompts, texts, answers)
    model.train(was_training)
    return {
        "reward": sum(rewards) / len(rewards),
        "kl": ((kl * mask).sum() / tokens).item(),
        "entropy": ((entropy * mask).sum() / tokens).item(),
        "diversity": sum(distinct) / len(distinct),
    }


def evaluation_callback(reference_path: Path, rows: list[dict], *, steps: int, group: int, max_new_tokens: int, seed: int,
                        monitor=None):
    """A :class:`adrpo.llm.callbacks.HeldOutEvaluation` of :func:`evaluate_policy` against the model at ``reference_path``
    (loaded here once and never synced: its ``kl`` is to the base also when the trainer's reference moves)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adrpo.llm.callbacks import policy_evaluation

    reference = AutoModelForCausalLM.from_pretrained(reference_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(reference_path)

    return policy_evaluation(evaluate_policy, reference, tokenizer, rows, steps=steps, group=group, max_new_tokens=max_new_tokens,
                             seed=seed, monitor=monitor)
