"""``kl_base``: with TRL's moving reference (``sync_ref_model``) ADRPOTrainer and fixed-β GRPO (AudioGRPOTrainer, the
same code: :mod:`adrpo.llm.base_kl`) log the KL to the base model beside TRL's ``kl`` (to the current reference), in
training rows and as ``eval_kl_base`` in TRL's evaluation. The tests run both trainers.

Until the reference first moves (it is synced at the end of step 2 here) the two are the same estimator on the
same base, so they agree; after, they differ. Without ``sync_ref_model`` the reference is the base, ``kl`` is the
drift, and nothing more is logged (no frozen copy is made). Measuring never changes training: the weights equal
a run whose frozen copy was withheld, bit for bit, and fixed-β GRPO's weights and rows (``kl_base`` aside) equal
stock TRL's.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from adrpo.llm.audio import AudioGRPOTrainer
from adrpo.llm.config import ADRPOConfig
from adrpo.llm.tiny import char_tokenizer, save_model_and_tokenizer, tiny_causal_lm
from adrpo.llm.tiny_audio import tiny_audio_lm, tiny_audio_processor
from adrpo.llm.trainer import ADRPOTrainer

PROMPTS = ["1+2=", "3+4=", "5+1=", "2+2="]
MOVING = dict(sync_ref_model=True, ref_model_sync_steps=2, ref_model_mixup_alpha=0.5)
CONFIGS = {ADRPOTrainer: ADRPOConfig, AudioGRPOTrainer: GRPOConfig, GRPOTrainer: GRPOConfig}
both = pytest.mark.parametrize("cls", [ADRPOTrainer, AudioGRPOTrainer], ids=["adrpo", "grpo"])


def digit_count(completions, **kwargs):
    return [float(sum(c.isdigit() for c in text)) for text in completions]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    tokenizer = char_tokenizer(list("0123456789+="))
    model = tiny_causal_lm("qwen2", len(tokenizer), hidden=16, layers=1, heads=2)
    return save_model_and_tokenizer(model, tokenizer, tmp_path_factory.mktemp("tiny") / "model")


def train(model_path, tmp_path, *, steps, cls=ADRPOTrainer, **overrides) -> GRPOTrainer:
    # beta 0.04 is ADRPOConfig's default; GRPOConfig's, 0, would refuse sync_ref_model
    values = dict(output_dir=str(tmp_path / "out"), bf16=False, gradient_checkpointing=False, use_cpu=True, report_to="none",
                  disable_tqdm=True, save_strategy="no", max_steps=steps, logging_steps=1, per_device_train_batch_size=4,
                  per_device_eval_batch_size=4, num_generations=4, max_completion_length=6, learning_rate=3e-2, seed=0, beta=0.04)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        args = CONFIGS[cls](**{**values, **overrides})
    dataset = Dataset.from_dict({"prompt": PROMPTS})
    trainer = cls(model=str(model_path), reward_funcs=digit_count, args=args, train_dataset=dataset,
                  eval_dataset=dataset if args.eval_strategy != "no" else None)
    trainer.train()
    return trainer


@both
def test_kl_base_equals_kl_until_the_reference_moves_then_tracks_the_base(model_path, tmp_path, cls):
    trainer = train(model_path, tmp_path, steps=6, cls=cls, eval_strategy="steps", eval_steps=3, **MOVING)
    logged = [row for row in trainer.state.log_history if "kl" in row]
    assert [row["step"] for row in logged] == [1, 2, 3, 4, 5, 6]
    for row in logged:
        assert math.isfinite(row["kl_base"]) and row["kl_base"] >= 0
    # steps 1-2: reference == base. Equal up to float rounding only: TRL scores the reference at generation time,
    # the base is scored in the loss's forward (other batch composition, same weights and tokens)
    for row in logged[:2]:
        assert row["kl_base"] == pytest.approx(row["kl"], rel=1e-5, abs=1e-7)
    moved = logged[2:]
    assert all(abs(row["kl_base"] - row["kl"]) > 0.1 * row["kl_base"] for row in moved)
    evaluated = [row for row in trainer.state.log_history if "eval_kl" in row]
    assert [row["step"] for row in evaluated] == [3, 6]
    for row in evaluated:
        assert math.isfinite(row["eval_kl_base"]) and row["eval_kl_base"] >= 0 and row["eval_kl_base"] != row["eval_kl"]


@both
def test_kl_base_does_not_change_training(model_path, tmp_path, monkeypatch, cls):
    measured = train(model_path, tmp_path / "measured", steps=4, cls=cls, **MOVING)
    monkeypatch.setattr(cls, "_frozen_base", lambda self: None)
    unmeasured = train(model_path, tmp_path / "unmeasured", steps=4, cls=cls, **MOVING)
    assert measured.base_model is not None and unmeasured.base_model is None
    for (name, a), b in zip(measured.model.state_dict().items(), unmeasured.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert all("kl_base" not in row for row in unmeasured.state.log_history)


@both
def test_no_kl_base_without_a_moving_reference(model_path, tmp_path, cls):
    trainer = train(model_path, tmp_path, steps=2, cls=cls)
    assert trainer.base_model is None
    logged = [row for row in trainer.state.log_history if "kl" in row]
    assert logged and all("kl_base" not in row for row in logged)


def test_grpo_with_kl_base_trains_and_logs_as_stock_trl(model_path, tmp_path):
    """Fixed-β GRPO with a moving reference: stock TRL's weights and rows, bit for bit, plus ``kl_base``."""
    ours = train(model_path, tmp_path / "ours", steps=4, cls=AudioGRPOTrainer, **MOVING)
    stock = train(model_path, tmp_path / "stock", steps=4, cls=GRPOTrainer, **MOVING)
    for (name, a), b in zip(ours.model.state_dict().items(), stock.model.state_dict().values()):
        assert torch.equal(a, b), name
    timing = {"step_time", "train_runtime", "train_samples_per_second", "train_steps_per_second"}
    rows = [[{k: v for k, v in row.items() if k not in timing} for row in t.state.log_history] for t in (ours, stock)]
    assert all("kl_base" in row for row in rows[0][:-1])  # every training row; the last is transformers' summary
    assert [{k: v for k, v in row.items() if k != "kl_base"} for row in rows[0]] == rows[1]


def test_kl_base_scores_the_base_on_the_audio_rows(tmp_path):
    """On a tiny Qwen2-Audio, GRPO's ``kl_base`` equals TRL's ``kl`` until the reference moves: the base is scored
    with the rows' audio features (a text-only forward of the base would give other log-probs)."""
    processor = tiny_audio_processor(list("abcdefghijklmnopqrstuvwxyz "))
    path = save_model_and_tokenizer(tiny_audio_lm(processor, layers=1), processor, tmp_path / "model")
    tones = [(0.3 * np.sin(2 * np.pi * 300 * (i + 1) * np.arange(8000) / 16000)).astype(np.float32) for i in range(2)]
    rows = [{"prompt": [{"role": "user", "content": f"clip {c}"}], "audio": tone} for c, tone in zip("ab", tones)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = GRPOConfig(output_dir=str(tmp_path / "out"), bf16=False, gradient_checkpointing=False, use_cpu=True, report_to="none",
                          disable_tqdm=True, save_strategy="no", max_steps=3, logging_steps=1, per_device_train_batch_size=4,
                          num_generations=2, max_completion_length=4, learning_rate=3e-2, seed=0, beta=0.04, **MOVING)
        trainer = AudioGRPOTrainer(model=str(path), reward_funcs=lambda completions, **kw: [float(len(str(c))) for c in completions],
                                   args=args, train_dataset=Dataset.from_list(rows * 2))
        trainer.train()
    logged = [row for row in trainer.state.log_history if "kl" in row]
    assert [row["step"] for row in logged] == [1, 2, 3]
    for row in logged[:2]:
        assert row["kl_base"] == pytest.approx(row["kl"], rel=1e-5, abs=1e-7)
    assert logged[2]["kl_base"] != pytest.approx(logged[2]["kl"], rel=1e-3)
