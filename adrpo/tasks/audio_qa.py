"""The audio question-answering miniature (Table 2 and Table 3 analogs): a tiny Qwen2-Audio the project
pretrains itself on :mod:`adrpo.data.synthetic_audio`, with headroom.

Task: a one-second clip and a multiple-choice question in the recipe's prompt
(:func:`adrpo.data.mmau.choice_prompt`); a completion is ``<answer>choice</answer>``. Rewards are the
recipes' exact-choice accuracy and ``<answer>`` format (:mod:`adrpo.rewards.choice`), weights 1 and 0.5.

Model: :func:`adrpo.llm.tiny_audio.tiny_audio_lm` (Qwen2-Audio classes: Whisper features, an audio encoder, a
Qwen2 decoder) whose tokenizer is character level plus whole-word tokens for the question texts, the
recipe's fixed phrases and the choices, so that prompts stay short on a CPU. Pretraining is supervised next-token
prediction of the answer on the train split with a limited budget (``steps``), so the base model has clear
headroom: at the defaults it answers the speech questions and little of the others. ``label_noise`` replaces
each label, with that probability, by another choice (0 by default: at 0.3 the model still answered at chance
after 1000 steps). At lr 3e-3 it never left the answers' marginals. The model is cached by its settings
(:func:`base_model_path`).

The evaluator samples ``group`` completions per held-out item at temperature 1 with a fixed seed and reports
accuracy (the share of samples naming the right choice; ``reward``), accuracy per category in percent
(``acc/sound``, ``acc/music``, ``acc/speech``, ``acc/total``), the format rate, the per-token KL to the
reference (exact over the vocabulary, on the policy's own samples), the per-token entropy, and diversity =
distinct completions / G. The reference of :func:`evaluation_callback` is its own copy of the base model, which
TRL's ``sync_ref_model`` never moves: with a moving reference this ``kl`` is still the drift from the base (as
the training rows' ``kl_base``), not the KL to TRL's current reference.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adrpo.data.mmau import CATEGORIES, category_accuracy, choice_prompt
from adrpo.llm.tiny import save_model_and_tokenizer
from adrpo.llm.tiny_audio import tiny_audio_lm, tiny_audio_processor
from adrpo.settings import cache_root, settings_key

CHARS = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ ?'[],.:<>/")
CACHE_VERSION = 1
REWARD_WEIGHTS = (1.0, 0.5)  # choice accuracy, <answer> format


@dataclass(frozen=True)
class AudioQASettings:
    train_items: int = 960
    test_items: int = 96
    duration: float = 1.0
    data_seed: int = 0
    label_noise: float = 0.0
    hidden: int = 64
    audio_hidden: int = 64
    layers: int = 2
    steps: int = 600
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0

    def key(self) -> str:
        return settings_key(self, CACHE_VERSION)


SETTINGS = AudioQASettings


def answer_text(choice: str) -> str:
    return f"<answer>{choice}</answer>"


def split_rows(settings: AudioQASettings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held-out) trainer rows: ``{"prompt": [user message], "audio": (S,) float32, "answer", "choices",
    "category", "id"}``, the held-out items from the benchmark's test split."""
    from adrpo.data.synthetic_audio import make_items

    def rows(split: str, n: int) -> list[dict[str, Any]]:
        items = make_items(n, split=split, seed=settings.data_seed, duration=settings.duration)
        return [{"id": item["id"], "prompt": [{"role": "user", "content": choice_prompt(item["question"], item["choices"])}],
                 "audio": item["audio"], "answer": item["answer"], "choices": item["choices"], "category": item["category"]}
                for item in items]

    return rows("train", settings.train_items), rows("test", settings.test_items)


def vocabulary_words(rows: list[dict[str, Any]]) -> list[str]:
    """Whole-word tokens: the recipe's fixed phrases, every question text and every choice."""
    fixed = [" Please choose the answer from the following options: [", "]. Output the final answer in <answer> </answer>.",
             "<answer>", "</answer>", "', '"]
    questions = {row["prompt"][0]["content"].split(" Please choose")[0] for row in rows}
    choices = {choice for row in rows for choice in row["choices"] if len(choice) > 1}
    return fixed + sorted(questions) + sorted(choices)


def conversation(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The row's prompt with its clip as the audio part (what the trainer renders)."""
    from adrpo.llm.audio import with_audio_part

    return with_audio_part(row["prompt"], row["audio"], where=f"row {row['id']}")


def encode_prompts(processor, rows: list[dict[str, Any]]) -> tuple[list[list[int]], dict[str, torch.Tensor]]:
    """Prompt token ids per row (audio tokens expanded) and the (N, M, F) features with their (N, F) mask.

    A row given several times (the evaluation's G samples of each) has its clip extracted once."""
    from adrpo.llm.audio_features import extracting_each_clip_once

    with extracting_each_clip_once(processor):
        out = processor.apply_chat_template([conversation(row) for row in rows], add_generation_prompt=True, tokenize=True,
                                            return_dict=True)
    features = {key: torch.as_tensor(np.asarray(out[key])) for key in ("input_features", "feature_attention_mask")}
    return [list(ids) for ids in out["input_ids"]], features


def pretrain(settings: AudioQASettings, path: Path) -> Path:
    """Noisy supervised pretraining of a tiny Qwen2-Audio on the train split; saved to ``path``."""
    train, held_out = split_rows(settings)
    processor = tiny_audio_processor(CHARS, words=vocabulary_words(train + held_out), clip_seconds=max(1, round(settings.duration)))
    tokenizer = processor.tokenizer
    model = tiny_audio_lm(processor, hidden=settings.hidden, audio_hidden=settings.audio_hidden, layers=settings.layers,
                          clip_seconds=max(1, round(settings.duration)), seed=settings.seed)
    prompt_ids, features = encode_prompts(processor, train)
    rng = random.Random(settings.seed + 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr)
    model.train()
    for _ in range(settings.steps):
        batch = rng.sample(range(len(train)), k=min(settings.batch_size, len(train)))
        sequences, targets = [], []
        for i in batch:
            row = train[i]
            label = row["answer"]
            if rng.random() < settings.label_noise:
                label = rng.choice([c for c in row["choices"] if c != row["answer"]])
            answer = tokenizer(answer_text(label), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            sequences.append(prompt_ids[i] + answer)
            targets.append([-100] * len(prompt_ids[i]) + answer)
        width = max(map(len, sequences))
        input_ids = torch.tensor([s + [tokenizer.pad_token_id] * (width - len(s)) for s in sequences])
        labels = torch.tensor([t + [-100] * (width - len(t)) for t in targets])
        attention = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels,
                     **{key: value[batch] for key, value in features.items()}).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    tmp = path.with_name(path.name + ".tmp")
    save_model_and_tokenizer(model, processor, tmp)
    os.replace(tmp, path)
    return path


def base_model_path(settings: AudioQASettings, *, cache: str | Path | None = None) -> Path:
    """The cached pretrained model folder (TRL loads it and its processor, and rebuilds the reference from it)."""
    path = (Path(cache) if cache else cache_root()) / "audio_qa" / f"model-{settings.key()}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        pretrain(settings, path)
    return path


def reward_funcs() -> list:
    from adrpo.rewards.choice import answer_format_reward, choice_accuracy_reward
    from adrpo.rewards.text import checked

    return [checked(choice_accuracy_reward), checked(answer_format_reward)]


@torch.no_grad()
def evaluate_policy(model, reference, processor, rows: list[dict[str, Any]], *, group: int, max_new_tokens: int, seed: int) -> dict[str, float]:
    """Held-out accuracy (overall and per category), format rate, KL(π‖π_ref) and entropy per token, diversity.

    The G samples of each row are drawn with ``seed``: the metrics are a function of (policy, rows, seed), and
    torch's global random state is the same after the call as before.
    """
    from adrpo.rewards.choice import answer_format_reward, choice_accuracy_reward

    was_training = model.training
    model.eval()
    tokenizer = processor.tokenizer
    repeated = [row for row in rows for _ in range(group)]
    prompt_ids, features = encode_prompts(processor, repeated)
    width = max(map(len, prompt_ids))
    input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompt_ids], device=model.device)
    prompt_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=model.device)
    features = {key: value.to(model.device) for key, value in features.items()}
    accelerators = range(torch.accelerator.device_count()) if torch.accelerator.is_available() else []
    with torch.random.fork_rng(devices=accelerators):  # evaluating must not move training's random state
        torch.manual_seed(seed)
        out = model.generate(input_ids=input_ids, attention_mask=prompt_mask, **features, do_sample=True, temperature=1.0, top_k=0,
                             top_p=1.0, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, suppress_tokens=[model.config.audio_token_id])
    completion_ids = out[:, width:]  # (N, T)
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    is_eos = completion_ids == tokenizer.eos_token_id
    mask = ((is_eos.cumsum(dim=1) - is_eos.long()) == 0).float()  # tokens up to and including the first eos, (N, T)
    attention = torch.cat([prompt_mask, mask.long()], dim=1)
    logp = model(input_ids=out, attention_mask=attention, **features).logits[:, width - 1 : -1].log_softmax(-1)  # (N, T, V)
    ref_logp = reference(input_ids=out, attention_mask=attention, **features).logits[:, width - 1 : -1].log_softmax(-1)
    kl = (logp.exp() * (logp - ref_logp)).sum(-1)  # (N, T)
    entropy = -(logp.exp() * logp).sum(-1)
    tokens = mask.sum().clamp_min(1)
    prompts = [row["prompt"] for row in repeated]
    correct = choice_accuracy_reward(prompts, texts, [r["answer"] for r in repeated], [r["choices"] for r in repeated])
    formatted = answer_format_reward(prompts, texts)
    by_category = category_accuracy([(row["category"], bool(c)) for row, c in zip(repeated, correct)])
    distinct = [len(set(texts[i : i + group])) / group for i in range(0, len(texts), group)]
    model.train(was_training)
    return {
        "reward": sum(correct) / len(correct),
        **{f"acc/{key}": by_category[key] for key in (*CATEGORIES, "total")},
        "format": sum(formatted) / len(formatted),
        "kl": ((kl * mask).sum() / tokens).item(),
        "entropy": ((entropy * mask).sum() / tokens).item(),
        "diversity": sum(distinct) / len(distinct),
    }


def evaluation_callback(reference_path: Path, rows: list[dict[str, Any]], *, steps: int, group: int, max_new_tokens: int, seed: int,
                        monitor=None):
    """A :class:`adrpo.llm.callbacks.HeldOutEvaluation` of :func:`evaluate_policy` against the model at ``reference_path``
    (loaded here once and never synced: its ``kl`` is to the base also when the trainer's reference moves)."""
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    from adrpo.llm.callbacks import policy_evaluation

    reference = Qwen2AudioForConditionalGeneration.from_pretrained(reference_path).eval()
    processor = AutoProcessor.from_pretrained(reference_path)

    return policy_evaluation(evaluate_policy, reference, processor, rows, steps=steps, group=group, max_new_tokens=max_new_tokens,
                             seed=seed, monitor=monitor)
