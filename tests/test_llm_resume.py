"""A GRPO run stopped right after a checkpoint and resumed with ``resume_from_checkpoint`` ends with the same
weights, bit for bit, and logs the same rows as a run never stopped (:mod:`adrpo.llm.resume`).

The stop is in-process: a callback sets ``should_training_stop`` in ``on_save``, so the run ends with the
checkpoint as its last write, which is what a ``kill -9`` right after the save leaves; the last test kills
``adrpo grpo train`` with SIGKILL for real and resumes it with ``--resume``. The scenario is chosen to need all three parts of the
fix: two epochs (the sampler's permutation of epoch 1), ``steps_per_generation = 2`` with the checkpoint inside
a generation buffer, and TRL's moving reference. Stock TRL diverges on it (checked too), so the test is not
passing by luck. transformers' final summary row (train_loss, runtimes) is per ``train()`` call and left out.
A model whose saved weight names differ from its own (Qwen2-Audio) is reloaded with its trained weights, where
transformers' own resume loads none of them.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from datasets import Dataset
from safetensors.torch import load_file
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from adrpo.llm.config import ADRPOConfig
from adrpo.llm.resume import BUFFER_FILE, REFERENCE_FILE, EpochSeededRepeatSampler, ExactResume, saved_weight_names
from adrpo.llm.tiny import char_tokenizer, save_model_and_tokenizer, tiny_causal_lm
from adrpo.llm.tiny_audio import tiny_audio_lm, tiny_audio_processor
from adrpo.llm.trainer import ADRPOTrainer

PROMPTS = ["1+2=", "3+4=", "5+1=", "2+2="]
TIMING = ("step_time",)


class ResumableGRPO(ExactResume, GRPOTrainer):
    """Stock GRPO with the exact resume."""


class StopAfterSave(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def digit_count(completions, **kwargs):
    return [float(sum(c.isdigit() for c in text)) for text in completions]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    tokenizer = char_tokenizer(list("0123456789+="))
    model = tiny_causal_lm("qwen2", len(tokenizer), hidden=16, layers=1, heads=2)  # tied embeddings
    return save_model_and_tokenizer(model, tokenizer, tmp_path_factory.mktemp("tiny") / "model")


def run(cls, model_path, output_dir, *, steps, save_steps, resume=None, stop=None, **overrides):
    config = ADRPOConfig if cls is ADRPOTrainer else GRPOConfig
    values = dict(output_dir=str(output_dir), bf16=False, gradient_checkpointing=False, use_cpu=True, report_to="none",
                  disable_tqdm=True, max_steps=steps, save_strategy="steps", save_steps=save_steps, logging_steps=1,
                  per_device_train_batch_size=4, num_generations=4, max_completion_length=6, learning_rate=1e-2, beta=0.04, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        args = config(**{**values, **overrides})
    trainer = cls(model=str(model_path), reward_funcs=digit_count, args=args, train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
                  callbacks=[StopAfterSave(stop)] if stop else None)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def rows(trainer) -> list[dict]:
    """The per-step rows, without their wall-clock timing (and without transformers' per-call summary row)."""
    return [{k: v for k, v in row.items() if k not in TIMING} for row in trainer.state.log_history if "train_runtime" not in row]


def bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def stopped_and_resumed(cls, model_path, output_dir, *, steps, save_steps, **overrides):
    run(cls, model_path, output_dir, steps=steps, save_steps=save_steps, stop=save_steps, **overrides)
    checkpoint = output_dir / f"checkpoint-{save_steps}"
    return run(cls, model_path, output_dir, steps=steps, save_steps=save_steps, resume=str(checkpoint), **overrides), checkpoint


def test_epoch_seeded_sampler_orders_as_trls_and_by_epoch_alone():
    from trl.trainer.utils import RepeatSampler

    stock = RepeatSampler(list(range(7)), mini_repeat_count=2, batch_size=3, repeat_count=2, seed=5)
    ours = EpochSeededRepeatSampler.like(stock)
    stock_epochs = [list(stock) for _ in range(3)]  # TRL: one permutation per epoch from one generator
    ours_epochs = []
    for epoch in range(3):
        ours.set_epoch(epoch)
        ours_epochs.append(list(ours))
    assert ours_epochs == stock_epochs
    fresh = EpochSeededRepeatSampler.like(stock)
    fresh.set_epoch(2)  # a resumed run's first epoch
    assert list(fresh) == stock_epochs[2] != stock_epochs[0]


def test_a_checkpoint_inside_a_logging_interval_warns(model_path, tmp_path):
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", per_device_train_batch_size=4, num_generations=4,
                      save_strategy="steps", save_steps=3, logging_steps=2)
    with pytest.warns(UserWarning, match=r"save_steps \(3\) is not a multiple of logging_steps \(2\)"):
        ResumableGRPO(model=str(model_path), reward_funcs=digit_count, args=args, train_dataset=Dataset.from_dict({"prompt": PROMPTS}))


def test_resume_mid_buffer_in_the_second_epoch_is_exact(model_path, tmp_path):
    # 4 prompts, 1 per step, steps_per_generation 2: steps 1-2, 3-4, 5-6, 7-8 share a generation; epoch 1 is steps 5-8.
    # The checkpoint after step 5 is in epoch 1 and inside a buffer.
    setting = dict(steps=8, save_steps=5, steps_per_generation=2)
    stock = run(GRPOTrainer, model_path, tmp_path / "stock", **setting)
    ours = run(ResumableGRPO, model_path, tmp_path / "ours", **setting)
    assert bitwise_equal(weights(ours), weights(stock)) and rows(ours) == rows(stock)  # training itself unchanged

    resumed, checkpoint = stopped_and_resumed(ResumableGRPO, model_path, tmp_path / "resumed", **setting)
    buffer, state = checkpoint / BUFFER_FILE.format(process=0), checkpoint / "trainer_state.json"
    assert buffer.stat().st_mtime_ns <= state.stat().st_mtime_ns  # a checkpoint killed before its state has no buffer either
    head, embedding = resumed.model.lm_head.weight, resumed.model.model.embed_tokens.weight
    assert head is embedding  # transformers' "missing lm_head.weight" on reload: the tied head, re-tied
    assert bitwise_equal(weights(resumed), weights(ours))
    assert rows(resumed) == rows(ours)

    stock_resumed, _ = stopped_and_resumed(GRPOTrainer, model_path, tmp_path / "stock-resumed", **setting)
    assert not bitwise_equal(weights(stock_resumed), weights(stock))  # what the fix is for
    assert rows(stock_resumed)[5:] != rows(stock)[5:]


def test_adrpo_resume_with_a_moving_reference_is_exact(model_path, tmp_path):
    # the reference moves halfway to the policy every 2 steps; the checkpoint after step 3 holds a moved reference
    setting = dict(steps=6, save_steps=3, sync_ref_model=True, ref_model_sync_steps=2, ref_model_mixup_alpha=0.5)
    whole = run(ADRPOTrainer, model_path, tmp_path / "whole", **setting)
    resumed, checkpoint = stopped_and_resumed(ADRPOTrainer, model_path, tmp_path / "resumed", **setting)
    assert (checkpoint / REFERENCE_FILE).exists()
    assert bitwise_equal(weights(resumed), weights(whole))
    assert bitwise_equal(resumed.ref_model.state_dict(), whole.ref_model.state_dict())
    assert rows(resumed) == rows(whole)
    assert all(math.isfinite(row["kl_base"]) for row in rows(whole))  # the base (not moved) is rebuilt the same on resume


def test_resume_loads_weights_saved_under_their_original_names(tmp_path):
    # Qwen2-Audio has a conversion mapping: save_pretrained writes audio_tower.*, the model holds model.audio_tower.*
    from transformers import Qwen2AudioForConditionalGeneration

    processor = tiny_audio_processor(list("abc ?"))
    base = save_model_and_tokenizer(tiny_audio_lm(processor), processor, tmp_path / "base")
    trained = Qwen2AudioForConditionalGeneration.from_pretrained(base)
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(0.5)
    trained.save_pretrained(tmp_path / "checkpoint")
    assert not saved_weight_names(tmp_path / "checkpoint") <= set(trained.state_dict())  # what transformers' Trainer loads as is
    args = GRPOConfig(output_dir=str(tmp_path / "out"), bf16=False, gradient_checkpointing=False, use_cpu=True, report_to="none",
                      per_device_train_batch_size=4, num_generations=4)
    prompts = Dataset.from_dict({"prompt": [[{"role": "user", "content": "a"}]] * 4})
    trainer = ADRPOTrainer(model=str(base), reward_funcs=digit_count, args=args, train_dataset=prompts)
    GRPOTrainer._load_from_checkpoint(trainer, str(tmp_path / "checkpoint"))  # transformers': nothing loads
    assert not bitwise_equal(weights(trainer), trained.state_dict())
    trainer._load_from_checkpoint(str(tmp_path / "checkpoint"))
    assert bitwise_equal(weights(trainer), trained.state_dict())


def test_resume_takes_the_newest_checkpoint_whose_save_finished(tmp_path):
    from adrpo.llm.resume import newest_complete_checkpoint

    for step, state in ((2, "{}"), (10, "{}"), (12, None), (14, '{"global_step": 1')):  # 12: killed before its state, 14: while writing it
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-final").mkdir()
    assert newest_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-10"  # by number, not by name (10 > 2)
    assert newest_complete_checkpoint(tmp_path / "nothing-here") is None


def grpo_train_command(folder: Path, model_path: Path, output_dir: Path, *extra: str, max_steps: int = 16, save_steps: int = 4) -> list[str]:
    """`adrpo grpo train` on a recipe in ``folder``: ``max_steps`` steps of ADRPO, one prompt of the 4 a step (an epoch
    is 4 steps), a checkpoint every ``save_steps`` steps."""
    (folder / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    (folder / "run.yaml").write_text(yaml.safe_dump({
        "model_name_or_path": str(model_path), "trainer": "adrpo", "dataset": {"path": "prompts.jsonl"}, "monitor": "off",
        "rewards": [{"type": "format", "pattern": "[0-9]{2,}"}],
        "args": {"output_dir": str(output_dir), "max_steps": max_steps, "save_strategy": "steps", "save_steps": save_steps, "logging_steps": 1,
                 "per_device_train_batch_size": 4, "num_generations": 4, "max_completion_length": 6, "learning_rate": 1e-2,
                 "beta": 0.04, "seed": 0, "report_to": "none", "use_cpu": True, "disable_tqdm": True},
    }))
    return [sys.executable, "-m", "adrpo.cli", "grpo", "train", "--config", str(folder / "run.yaml"), *extra]


def final_state(output_dir: Path) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """The saved model and the last checkpoint's logged rows, without their wall-clock timing."""
    history = json.loads((output_dir / "checkpoint-16" / "trainer_state.json").read_text())["log_history"]
    return load_file(output_dir / "model.safetensors"), [{k: v for k, v in row.items() if k not in TIMING} for row in history]


@pytest.mark.timeout(300)
def test_grpo_train_killed_after_a_checkpoint_and_resumed_ends_as_a_run_never_killed(model_path, tmp_path):
    """`adrpo grpo train` killed with SIGKILL once its first checkpoint is written (wherever the run is then: a later
    checkpoint may be half written), then `--resume`: the same saved weights, bit for bit, and the same logged rows."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    (tmp_path / "whole").mkdir()
    subprocess.run(grpo_train_command(tmp_path / "whole", model_path, tmp_path / "whole" / "out"), check=True, env=env,
                   capture_output=True, timeout=240)
    (tmp_path / "killed").mkdir()
    output_dir = tmp_path / "killed" / "out"
    command = grpo_train_command(tmp_path / "killed", model_path, output_dir)
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while process.poll() is None and not (output_dir / "checkpoint-4" / "trainer_state.json").exists():
        time.sleep(0.01)
    process.kill()
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (output_dir / "model.safetensors").exists()
    subprocess.run([*command, "--resume"], check=True, env=env, capture_output=True, timeout=240)

    whole_weights, whole_rows = final_state(tmp_path / "whole" / "out")
    weights_after_kill, rows_after_kill = final_state(output_dir)
    assert bitwise_equal(weights_after_kill, whole_weights)
    assert len(whole_rows) == 16 and rows_after_kill == whole_rows


@pytest.mark.timeout(300)
def test_resuming_a_finished_run_saves_its_weights_and_trains_no_more(model_path, tmp_path, capsys):
    """6 steps with 4 to an epoch: transformers would train a 7th from checkpoint-6 (it checks max_steps after a step).
    A run killed between its last checkpoint and its final save, resumed: the checkpoint's weights are saved, the state
    stays at step 6."""
    from adrpo import cli

    output_dir = tmp_path / "out"
    argv = grpo_train_command(tmp_path, model_path, output_dir, max_steps=6, save_steps=3)[3:]
    cli.main(argv)
    finished = load_file(output_dir / "model.safetensors")
    (output_dir / "model.safetensors").unlink()  # killed before the final save
    cli.main([*argv, "--resume"])
    assert bitwise_equal(load_file(output_dir / "model.safetensors"), finished)  # without the check: step 7's weights
    assert "checkpoint-6: the run had reached max_steps 6; nothing to train" in capsys.readouterr().err
    state = json.loads((output_dir / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and not (output_dir / "checkpoint-7").exists()
