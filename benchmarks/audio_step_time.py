"""The audio path's training-step time: ADRPO vs fixed-β GRPO on audio, and audio vs text of the same length.

One tiny Qwen2-Audio (``adrpo.llm.tiny_audio``, character tokenizer, saved to a temp dir, offline) and
three trainers built from it with the same GRPOConfig fields (16 completions per step, G = 8, 6 tokens,
β = β0 = 0.04, so every trainer computes the reference log-probabilities and the KL):

- ``adrpo``: :class:`ADRPOTrainer` (default clip ±β0) on rows with an ``audio`` column (8 distinct
  1-second 16 kHz clips, a seeded tone plus noise each); the features go to ``generate`` and to every
  log-prob forward.
- ``grpo``: :class:`AudioGRPOTrainer` with fixed β on the same audio rows.
- ``text``: :class:`AudioGRPOTrainer` on the same model with text-only rows whose question is padded
  with a repeated character, so that every tokenized prompt has as many tokens as the audio prompt
  with its expanded audio tokens (asserted on the trainers' own tokenization); it skips only the audio
  work: feature extraction, the audio tower in every forward, and merging its output into the prompt.

Blocks of ``--steps`` optimizer steps (one ``train()`` call each) rotate over the three trainers in
palindromic order (adrpo, grpo, text, then text, grpo, adrpo: ABBA for each pair) for ``--rounds``
rounds; a callback records each step's wall time (generation, scoring, loss, backward, optimizer),
the first ``--warmup`` steps of every block are dropped, and the medians are compared. Printed:
the audio/text ratio (reported, no target), then the adrpo/grpo ratio (target ≤ 1.02) as the last line.

    .venv/bin/python benchmarks/audio_step_time.py            # ~70 s on one CPU thread
"""

from __future__ import annotations

import os
import tempfile
import warnings

import numpy as np
import torch
from _common import git_commit, machine
from _trl import StepTimer, print_step_medians, train_in_palindromic_blocks, trl_step_parser
from datasets import Dataset
from transformers import PrinterCallback
from trl import GRPOConfig

from adrpo.llm.audio import AudioGRPOTrainer, with_audio_part
from adrpo.llm.config import ADRPOConfig
from adrpo.llm.tiny import save_model_and_tokenizer
from adrpo.llm.tiny_audio import audio_tokens, tiny_audio_lm, tiny_audio_processor
from adrpo.llm.trainer import ADRPOTrainer

RATE = 16000
N_CLIPS = 8
CHARS = list("abcdefghijklmnopqrstuvwxyz :?")
FILLER = "z"  # pads the text-only questions to the audio prompts' token count


def vowel_reward(completions, **kwargs):
    """Vowels in the completion: graded, so the completions of a group usually differ."""
    from adrpo.rewards.text import completion_text

    return [float(sum(completion_text(c).count(v) for v in "aeiou")) for c in completions]


def clips(seed: int) -> list[np.ndarray]:
    """``N_CLIPS`` distinct 1-second (S,) float32 clips at 16 kHz: a tone of a random pitch plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(RATE) / RATE
    return [(0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t) + 0.05 * rng.standard_normal(RATE)).astype(np.float32)
            for _ in range(N_CLIPS)]


def question(i: int) -> str:
    return f"what is clip {'abcdefgh'[i]}?"


def prompt_lengths(trainer: AudioGRPOTrainer, rows: list[dict]) -> list[int]:
    """Token count of each row's prompt as the trainer tokenizes it (audio rows with their clip in the prompt)."""
    prompts = [with_audio_part(r["prompt"], r["audio"], where="") if "audio" in r else r["prompt"] for r in rows]
    prompt_ids, _, _ = trainer._tokenize_prompts(prompts)
    trainer._audio_inputs = None  # _tokenize_prompts keeps the features for the forwards of a step
    return [len(ids) for ids in prompt_ids]


def main() -> None:
    opts = trl_step_parser(__doc__, rounds=20).parse_args()
    torch.set_num_threads(opts.threads)
    warnings.simplefilter("ignore")

    workdir = tempfile.mkdtemp(prefix="adrpo-bench-")
    processor = tiny_audio_processor(CHARS, family="qwen2_audio")
    path = save_model_and_tokenizer(tiny_audio_lm(processor, hidden=64, seed=opts.seed), processor, os.path.join(workdir, "tiny"))
    # bos + the expanded audio tokens + eos: what an audio part adds to a prompt
    extra = audio_tokens(1.0) + 2
    audio_rows = [{"prompt": [{"role": "user", "content": question(i)}], "audio": clip} for i, clip in enumerate(clips(opts.seed))]
    text_rows = [{"prompt": [{"role": "user", "content": question(i) + FILLER * extra}]} for i in range(N_CLIPS)]
    common = dict(per_device_train_batch_size=16, num_generations=8, max_completion_length=6, max_steps=opts.steps,
                  learning_rate=1e-4, beta=0.04, bf16=False, gradient_checkpointing=False, use_cpu=True,
                  report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, seed=opts.seed)
    timers = {"adrpo": StepTimer(), "grpo": StepTimer(), "text": StepTimer()}

    def build(name: str):
        config_cls, trainer_cls = (ADRPOConfig, ADRPOTrainer) if name == "adrpo" else (GRPOConfig, AudioGRPOTrainer)
        args = config_cls(output_dir=os.path.join(workdir, name), **common)
        rows = text_rows if name == "text" else audio_rows
        trainer = trainer_cls(model=str(path), reward_funcs=vowel_reward, args=args, train_dataset=Dataset.from_list(rows),
                              callbacks=[timers[name]])
        trainer.remove_callback(PrinterCallback)
        return trainer

    trainers = {name: build(name) for name in timers}
    audio_lengths = prompt_lengths(trainers["grpo"], audio_rows)
    text_lengths = prompt_lengths(trainers["text"], text_rows)
    assert audio_lengths == text_lengths, f"prompt tokens: audio {audio_lengths}, text {text_lengths}"

    samples = train_in_palindromic_blocks(trainers, timers, rounds=opts.rounds, warmup=opts.warmup)
    print(f"machine: {machine()}")
    print(f"commit: {git_commit()}")
    print(f"settings: tiny qwen2_audio hidden=64 audio_hidden=32, {N_CLIPS} clips of 1 s at {RATE} Hz, prompt {audio_lengths[0]} tokens "
          f"({extra} of audio), batch 16 completions (G=8), 6 tokens, beta=0.04, rounds={opts.rounds} steps/block={opts.steps} "
          f"warmup={opts.warmup} (palindromic order), seed={opts.seed}")
    medians = print_step_medians(samples)
    print(f"ratio audio/text step time (grpo): {medians['grpo'] / medians['text']:.3f} (reported)")
    print(f"ratio adrpo/grpo step time (audio): {medians['adrpo'] / medians['grpo']:.3f} (target <= 1.02)")


if __name__ == "__main__":
    main()
